//! Laptop-side cluster tools: discover master1 over mDNS, fetch a verified kubeconfig,
//! report the cluster's status. What the nodes themselves run is the seed's
//! (`seed::node`): nothing here lands on a node.
pub mod discover;
pub mod fetch;
pub mod k3s_api;
pub mod kubeconfig;
pub mod mdns;
pub mod status;
pub mod txt;
pub mod watch;
