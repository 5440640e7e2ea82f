//! The control node: daemon, CLI, REST API, inventory, host lifecycle and imaging workflow, the
//! imager that runs in the deploy ramdisk, and the host agent.
#![warn(clippy::print_stdout)]
