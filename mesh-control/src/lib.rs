//! The mesh control plane: the store of resources (embedded or etcd), config distribution to
//! agents, and the admin API; plus the client side `meshctl` uses.

pub mod client;
pub mod keys;
pub mod server;
pub mod store;
