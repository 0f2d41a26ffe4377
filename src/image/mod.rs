//! The USB image: the Ubuntu ISO copied, its GRUB menu patched in place, and a CIDATA
//! partition appended (image.md).
