//! The handlers, one module per resource.

pub mod apps;
pub mod certificates;
pub mod edges;
pub mod meta;
pub mod orgs;
