//! What a network is: its spec ([`NetSpec`]) and the layout of its parameter vector θ
//! ([`ThetaLayout`]); a network beyond dense layers is a [`LayerStack`]. Depends on nothing else in wgnn.

mod params;
mod spec;
mod stack;

pub use params::{Init, ThetaLayout};
pub use spec::{Activation, MAX_PARAMETERS, NetSpec, Output, Sparsity, SpecError};
pub use stack::{InputShape, Layer, LayerStack, ParsedNet, parse_net};
