//! One module per command. Each turns parsed arguments into calls on the pipeline's stages and
//! hands the results to `report`; none parses arguments or prints on its own.

pub mod abort;
pub mod apply;
pub mod cutover;
pub mod demo;
pub mod plan;
pub mod status;
pub mod verify;
