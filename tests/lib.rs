//! One integration test binary driving the real `chocoimg` and real peers.
//! Each area adds its module here.
mod artifacts;
mod cli;
mod cluster;
mod flash;
mod flash_vm;
mod guard;
mod ha;
mod ha_laptop;
mod hostile_lan;
mod house;
mod image;
mod profile;
mod secrets;
mod seed;
mod support;
mod watch;
