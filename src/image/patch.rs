//! An in-place change to the image, as the ISO and GPT code plan it and the writer
//! applies it.

/// One in-place write, at an absolute byte offset of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub at: u64,
    pub bytes: Vec<u8>,
}
