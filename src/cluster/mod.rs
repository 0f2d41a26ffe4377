//! Laptop-side cluster tools: discover master1 over mDNS, fetch a verified kubeconfig,
//! report the cluster's status.
pub mod node;
