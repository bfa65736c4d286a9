//! What a network is: its spec ([`NetSpec`]) and the layout of its parameter vector θ
//! ([`ThetaLayout`]); a network beyond dense layers is a [`LayerStack`]. Depends on nothing else in wgnn.

mod activation;
mod params;
mod spec;
mod stack;

pub use activation::{Activation, Output, SpecError};
pub use params::{Init, ThetaLayout};
pub use spec::{MAX_PARAMETERS, NetSpec, Sparsity};
pub use stack::{InputShape, Layer, LayerStack, ParsedNet, parse_net};
