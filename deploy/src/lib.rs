//! Checks of the deployment files, kept out of the services: the Nomad jobs under `jobs/`
//! (parsed as HCL and compared with the services' names, ports, health checks and the config
//! keys of `consul/kv.json`) and the repository's `Vagrantfile` (`vagrant validate`). The
//! crate has no code of its own; everything is in `tests/it`.
