//! A network as a stack of layers (DESIGN.md, "Wave 2: a network is a stack of layers"):
//! an input shape, hidden layers of any kind — dense, maxout, conv2d, max or mean pooling —
//! and then the output layer and loss of [`NetSpec`](super::NetSpec). Flattening between an
//! image and a dense layer is implicit: an image batch m × c × h × w is the m × (c·h·w)
//! matrix (PyTorch's `x.flatten(1)`).
//!
//! Shapes follow MATH.md, "Layers beyond dense": a convolution's output side is
//! ⌊(h + 2p − k)/s⌋ + 1, a pooling's (h − k)/s + 1 (regions must cover the image exactly).
//! Everything here is shape arithmetic in checked integers; nothing is allocated.

use serde::{Deserialize, Serialize};

use super::activation::{Activation, SpecError};

/// The shape of one input example: `channels` × `height` × `width` (features: 1 × 1 × n).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShape {
    /// Channels c (1 for plain features).
    pub channels: usize,
    /// Height h in pixels (1 for plain features).
    pub height: usize,
    /// Width w in pixels (the feature count for plain features).
    pub width: usize,
}

impl InputShape {
    /// n plain features (no image structure): 1 × 1 × n.
    pub fn features(n: usize) -> InputShape {
        InputShape { channels: 1, height: 1, width: n }
    }

    /// An image input of c × h × w values per example (channel-major, as PyTorch).
    pub fn image(channels: usize, height: usize, width: usize) -> InputShape {
        InputShape { channels, height, width }
    }

    /// A sequence of `steps` steps of `features` values each (m × T × n; MATH.md, "Layers
    /// beyond dense"): 1 × T × n, read by a recurrent layer as T steps of n. An example's row
    /// holds step t's features at columns t·n … t·n + n − 1 — the layout of a 1 × T × n image,
    /// so MNIST read row by row is the image itself.
    pub fn sequence(steps: usize, features: usize) -> InputShape {
        InputShape { channels: 1, height: steps, width: features }
    }

    /// c·h·w (saturating; [`LayerStack::shapes`] refuses sizes that overflow).
    pub fn len(&self) -> usize {
        self.channels.saturating_mul(self.height).saturating_mul(self.width)
    }

    /// Whether the input has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses `CxHxW` (also with `×`), e.g. `1x28x28`, or a plain feature count `N`.
    pub fn parse(text: &str) -> Result<InputShape, SpecError> {
        let parts: Vec<&str> = text.trim().split(['x', 'X', '×']).map(str::trim).collect();
        let nums: Option<Vec<usize>> = parts.iter().map(|p| p.parse::<usize>().ok()).collect();
        match nums.as_deref() {
            Some(&[c, h, w]) => Ok(InputShape::image(c, h, w)),
            Some(&[n]) => Ok(InputShape::features(n)),
            _ => Err(SpecError(format!(
                "input shape `{text}` is not CHANNELSxHEIGHTxWIDTH (e.g. 1x28x28) or a feature count"
            ))),
        }
    }

    /// "c×h×w", as messages show it.
    pub fn describe(&self) -> String {
        format!("{}×{}×{}", self.channels, self.height, self.width)
    }
}

/// One hidden layer of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layer {
    /// `units` outputs, f(A Wᵀ + b); W is units × inputs.
    Dense {
        /// Output units.
        units: usize,
        /// f applied to z = W a + b.
        activation: Activation,
    },
    /// `units` outputs, each the max of `pieces` affine pieces (Goodfellow et al. 2013);
    /// W is (units·pieces) × inputs, the pieces of unit u being rows u·k … u·k + k − 1.
    Maxout {
        /// Output units.
        units: usize,
        /// Pieces k per unit, each a linear function; the unit outputs their max.
        pieces: usize,
    },
    /// `filters` k × k filters, stride s, zero padding p, then f elementwise; W is
    /// filters × (channels·k·k), PyTorch's `Conv2d.weight` flattened.
    Conv2d {
        /// Output channels (filters).
        filters: usize,
        /// Kernel side k (square kernels).
        kernel: usize,
        /// Stride s.
        stride: usize,
        /// Zero padding p on every side.
        padding: usize,
        /// f applied to each output.
        activation: Activation,
    },
    /// Max over `size` × `size` regions every `stride` pixels. No parameters.
    MaxPool {
        /// Region side k.
        size: usize,
        /// Stride between regions.
        stride: usize,
    },
    /// Mean over `size` × `size` regions every `stride` pixels. No parameters.
    MeanPool {
        /// Region side k.
        size: usize,
        /// Stride between regions.
        stride: usize,
    },
    /// An Elman layer of `units` units (tanh or relu) over the T steps of a 1 × T × n sequence
    /// ([`crate::layers::rnn`]). In θ its weight block is W_ih (units × n) then W_hh
    /// (units × units), each row-major (PyTorch's `weight_ih_l0`, `weight_hh_l0`), listed in
    /// [`crate::model::ThetaLayout`] as one units × (n + units) entry; its bias has `units`
    /// values. With `per_step` it outputs h_1 … h_T (1 × T × units: for a recurrent layer
    /// above, or an output at every step), else h_T alone (`units` features).
    Rnn {
        /// Hidden units h.
        units: usize,
        /// f of the hidden state (tanh in Elman's net).
        activation: Activation,
        #[serde(default)]
        /// Feed every step's hidden state to the output (sequence labelling), not only the last.
        per_step: bool,
    },
    /// An LSTM layer of `units` units over the T steps of a 1 × T × n sequence
    /// ([`crate::layers::lstm`]; gates i, f, g, o as PyTorch). In θ: W_ih (4·units × n) then
    /// W_hh (4·units × units), one entry of 4·units × (n + units) in the layout; one bias of
    /// 4·units values. `per_step` as for [`Layer::Rnn`].
    Lstm {
        /// Hidden units h.
        units: usize,
        #[serde(default)]
        /// Feed every step's hidden state to the output (sequence labelling), not only the last.
        per_step: bool,
    },
}

impl Layer {
    /// True for the kinds that hold a weight matrix and a bias vector in θ.
    pub fn has_parameters(&self) -> bool {
        !matches!(self, Layer::MaxPool { .. } | Layer::MeanPool { .. })
    }

    /// True for the recurrent kinds (rnn, lstm), which read a sequence.
    pub fn is_recurrent(&self) -> bool {
        matches!(self, Layer::Rnn { .. } | Layer::Lstm { .. })
    }

    /// True for a recurrent layer that outputs every step (`per-step`).
    pub fn is_per_step(&self) -> bool {
        matches!(self, Layer::Rnn { per_step: true, .. } | Layer::Lstm { per_step: true, .. })
    }

    /// The layer as the `--net` grammar writes it, e.g. `conv 20x5x5 relu` (the inverse of
    /// [`parse_net`] for one layer).
    pub fn describe(&self) -> String {
        match *self {
            Layer::Dense { units, activation } => format!("dense {units} {}", activation.name()),
            Layer::Maxout { units, pieces } => format!("maxout {units}x{pieces}"),
            Layer::Conv2d { filters, kernel, stride, padding, activation } => {
                let mut s = format!("conv {filters}x{kernel}x{kernel} {}", activation.name());
                if stride != 1 {
                    s.push_str(&format!(" stride {stride}"));
                }
                if padding != 0 {
                    s.push_str(&format!(" pad {padding}"));
                }
                s
            }
            Layer::MaxPool { size, stride } | Layer::MeanPool { size, stride } => {
                let name = if matches!(self, Layer::MaxPool { .. }) { "maxpool" } else { "meanpool" };
                if stride == size { format!("{name} {size}") } else { format!("{name} {size} stride {stride}") }
            }
            Layer::Rnn { units, activation, per_step } => {
                format!("rnn {units} {}{}", activation.name(), if per_step { " per-step" } else { "" })
            }
            Layer::Lstm { units, per_step } => format!("lstm {units}{}", if per_step { " per-step" } else { "" }),
        }
    }
}

/// The input shape and hidden layers of a network; the output layer (dense, `outputs` units,
/// softmax or an activation with squared error) is the spec's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerStack {
    /// The input shape.
    pub input: InputShape,
    /// The hidden layers, input to output.
    pub layers: Vec<Layer>,
}

/// What flows out of a layer: its shape (c × h × w; 1 × 1 × n for features).
pub type Shape = InputShape;

impl LayerStack {
    /// The shape after each hidden layer (one entry per layer), or a one-line error naming
    /// the first layer that does not fit its input and the shapes involved.
    pub fn shapes(&self) -> Result<Vec<Shape>, SpecError> {
        let s = self.input;
        if s.channels == 0 || s.height == 0 || s.width == 0 {
            return Err(SpecError(format!("the input shape {} has a zero side", s.describe())));
        }
        checked(&[s.channels, s.height, s.width], "the input")?;
        let mut shape = s;
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let name = || format!("layer {} ({})", i + 1, layer.describe());
            if let Some(prev) = i.checked_sub(1).map(|p| &self.layers[p]) {
                sequence_order(prev, layer, &name, i)?;
            }
            shape = match *layer {
                Layer::Dense { units, activation } => {
                    activation.validate()?;
                    if units == 0 {
                        return Err(SpecError(format!("{}: a layer needs at least 1 unit", name())));
                    }
                    InputShape::features(units)
                }
                Layer::Maxout { units, pieces } => {
                    if units == 0 || pieces == 0 {
                        return Err(SpecError(format!("{}: units and pieces must both be at least 1", name())));
                    }
                    checked(&[units, pieces], &name())?;
                    InputShape::features(units)
                }
                Layer::Conv2d { filters, kernel, stride, padding, activation } => {
                    activation.validate()?;
                    if filters == 0 || kernel == 0 || stride == 0 {
                        return Err(SpecError(format!(
                            "{}: filters, kernel and stride must all be at least 1",
                            name()
                        )));
                    }
                    let padded = |side: usize| padding.checked_mul(2).and_then(|p| p.checked_add(side));
                    let (Some(ph), Some(pw)) = (padded(shape.height), padded(shape.width)) else {
                        return Err(SpecError(format!("{}: the padding {padding} is too large", name())));
                    };
                    if kernel > ph || kernel > pw {
                        return Err(SpecError(format!(
                            "{}: the {kernel}×{kernel} kernel is larger than its {} input padded to {ph}×{pw}: \
                             use a kernel of at most {} or more padding",
                            name(),
                            shape.describe(),
                            ph.min(pw)
                        )));
                    }
                    checked(&[filters, shape.channels, kernel, kernel], &name())?;
                    let o = InputShape::image(filters, (ph - kernel) / stride + 1, (pw - kernel) / stride + 1);
                    checked(&[o.height, o.width, shape.channels, kernel, kernel], &name())?;
                    o
                }
                Layer::MaxPool { size, stride } | Layer::MeanPool { size, stride } => {
                    if size == 0 || stride == 0 {
                        return Err(SpecError(format!("{}: size and stride must both be at least 1", name())));
                    }
                    let (h, w) = (shape.height, shape.width);
                    if size > h || size > w {
                        return Err(SpecError(format!(
                            "{}: the {size}×{size} region is larger than its {} input",
                            name(),
                            shape.describe()
                        )));
                    }
                    if !(h - size).is_multiple_of(stride) || !(w - size).is_multiple_of(stride) {
                        return Err(SpecError(format!(
                            "{}: {size}×{size} regions every {stride} do not cover its {} input exactly \
                             (the last rows or columns would be dropped): pick a size and stride with \
                             (side − size) divisible by the stride",
                            name(),
                            shape.describe()
                        )));
                    }
                    if u32::try_from(shape.len()).is_err() {
                        return Err(SpecError(format!("{}: its input is beyond 32-bit indices", name())));
                    }
                    InputShape::image(shape.channels, (h - size) / stride + 1, (w - size) / stride + 1)
                }
                Layer::Rnn { units, per_step, .. } | Layer::Lstm { units, per_step } => {
                    if let Layer::Rnn { activation, .. } = *layer
                        && !matches!(activation, Activation::Tanh | Activation::Relu)
                    {
                        return Err(SpecError(format!("{}: an rnn layer's activation is tanh or relu", name())));
                    }
                    if units == 0 {
                        return Err(SpecError(format!("{}: a layer needs at least 1 unit", name())));
                    }
                    if shape.channels != 1 {
                        return Err(SpecError(format!(
                            "{}: a recurrent layer reads a sequence of 1×T×n (T steps of n features), \
                             not a {} image: give the input shape as 1xTxN",
                            name(),
                            shape.describe()
                        )));
                    }
                    let gates = if matches!(layer, Layer::Lstm { .. }) { 4 } else { 1 };
                    let Some(row) = shape.width.checked_add(units) else {
                        return Err(SpecError(format!("{}: {units} units are too many", name())));
                    };
                    checked(&[gates, units, row], &name())?;
                    checked(&[shape.height, gates, units], &name())?;
                    if per_step { InputShape::sequence(shape.height, units) } else { InputShape::features(units) }
                }
            };
            out.push(shape);
        }
        Ok(out)
    }

    /// (rows, columns) of the weight matrix of each layer with parameters, in layer order,
    /// followed by the output layer's (outputs × the last hidden width). Requires valid
    /// [`LayerStack::shapes`].
    pub fn weight_shapes(&self, outputs: usize) -> Result<Vec<(usize, usize)>, SpecError> {
        let shapes = self.shapes()?;
        let mut prev = self.input;
        let mut w = Vec::new();
        for (layer, &shape) in self.layers.iter().zip(&shapes) {
            match *layer {
                Layer::Dense { units, .. } => w.push((units, prev.len())),
                Layer::Maxout { units, pieces } => w.push((units * pieces, prev.len())),
                Layer::Conv2d { filters, kernel, .. } => w.push((filters, prev.channels * kernel * kernel)),
                Layer::MaxPool { .. } | Layer::MeanPool { .. } => {}
                Layer::Rnn { units, .. } => w.push((units, prev.width + units)),
                Layer::Lstm { units, .. } => w.push((4 * units, prev.width + units)),
            }
            prev = shape;
        }
        // An output at every step reads one step's units.
        let last = if self.output_steps() > 1 { prev.width } else { prev.len() };
        w.push((outputs, last));
        Ok(w)
    }

    /// The `--net` description of the hidden layers, comma-separated.
    pub fn describe(&self) -> String {
        self.layers.iter().map(Layer::describe).collect::<Vec<_>>().join(", ")
    }

    /// True when the first layer is recurrent: the input is a sequence (1 × T × n) and the
    /// stack runs in [`crate::cpu::sequence`].
    pub fn is_sequence(&self) -> bool {
        self.layers.first().is_some_and(Layer::is_recurrent)
    }

    /// How many steps the output layer is applied at: T when the last hidden layer is a
    /// per-step recurrent layer (an output, label or target row per step), else 1.
    pub fn output_steps(&self) -> usize {
        match self.layers.last() {
            Some(l) if l.is_per_step() => self.input.height,
            _ => 1,
        }
    }

    /// True when every layer is dense: such a stack is today's dense network.
    pub fn is_dense(&self) -> bool {
        self.layers.iter().all(|l| matches!(l, Layer::Dense { .. }))
    }
}

/// The rules of order around recurrent layers: a recurrent layer reads a sequence (the input or
/// a per-step recurrent layer), and nothing but the output follows a recurrent layer yet.
fn sequence_order(prev: &Layer, layer: &Layer, name: &dyn Fn() -> String, i: usize) -> Result<(), SpecError> {
    match (prev.is_recurrent(), layer.is_recurrent()) {
        (false, true) => Err(SpecError(format!(
            "{}: a recurrent layer reads a sequence, but layer {i} ({}) is not recurrent: put rnn/lstm layers first",
            name(),
            prev.describe()
        ))),
        (true, true) if !prev.is_per_step() => Err(SpecError(format!(
            "{}: it reads every step of layer {i}, which gives its last step only: write `{} per-step`",
            name(),
            prev.describe()
        ))),
        (true, false) => Err(SpecError(format!(
            "{}: layers after a recurrent layer are not supported yet: put the output (e.g. softmax) right after layer {i} ({})",
            name(),
            prev.describe()
        ))),
        _ => Ok(()),
    }
}

fn checked(sizes: &[usize], what: &str) -> Result<usize, SpecError> {
    sizes.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).filter(|&n| n <= super::MAX_PARAMETERS).ok_or_else(|| {
        let shown: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
        SpecError(format!("{what}: {} values are too many (more than 2^31)", shown.join("×")))
    })
}

/// Marks a recurrent layer as giving every step (nothing for other kinds).
fn set_per_step(layer: &mut Layer) {
    if let Layer::Rnn { per_step, .. } | Layer::Lstm { per_step, .. } = layer {
        *per_step = true;
    }
}

/// A parsed `--net` description: hidden layers, then the output (`softmax [N]` or an
/// activation name with an optional size: squared error) — N is `None` when the data decides.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedNet {
    /// The hidden layers.
    pub layers: Vec<Layer>,
    /// The output layer and its loss.
    pub output: super::Output,
    /// Output units, when the description gives them.
    pub outputs: Option<usize>,
}

/// Parses the `--net` grammar, layers separated by commas:
/// `conv FxKxK ACT [stride S] [pad P]`, `maxpool K [stride S]`, `meanpool K [stride S]`
/// (also `avgpool`), `dense N ACT`, `maxout UxK` (units × pieces), `rnn H [tanh|relu]
/// [per-step]`, `lstm H [per-step]`, and last the output: `softmax [N]` or `ACT [N]` (squared
/// error), prefixed by `per-step` for an output at every step of the recurrent layer before it
/// (sequence labelling, language models). E.g.
/// `conv 20x5x5 relu, maxpool 2, conv 50x5x5 relu, maxpool 2, dense 500 relu, softmax`,
/// `lstm 128, softmax` (classification from the last step), `lstm 256, per-step softmax`.
/// A recurrent layer under another one gives it every step without writing `per-step`.
pub fn parse_net(text: &str) -> Result<ParsedNet, SpecError> {
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    let (last, hidden) = items.split_last().expect("split gives at least one item");
    let err = |item: &str, why: &str| SpecError(format!("--net layer `{item}`: {why}"));
    let num = |item: &str, s: &str, what: &str| -> Result<usize, SpecError> {
        s.parse::<usize>().map_err(|_| err(item, &format!("{what} `{s}` is not a whole number")))
    };
    let mut layers = Vec::new();
    for &item in hidden {
        let words: Vec<&str> = item.split_whitespace().collect();
        let Some((&kind, rest)) = words.split_first() else {
            return Err(err(item, "empty layer: remove the extra comma"));
        };
        // Options `stride S` and `pad P` after the positional words.
        let options = |rest: &[&str], positional: usize| -> Result<(usize, Option<usize>, usize), SpecError> {
            let (mut stride, mut pad) = (None, 0);
            let mut opts = rest[positional.min(rest.len())..].iter();
            while let Some(&key) = opts.next() {
                let Some(&value) = opts.next() else {
                    return Err(err(item, &format!("`{key}` needs a value")));
                };
                match key {
                    "stride" => stride = Some(num(item, value, "stride")?),
                    "pad" | "padding" => pad = num(item, value, "padding")?,
                    _ => return Err(err(item, &format!("unknown option `{key}`: use stride S or pad P"))),
                }
            }
            Ok((positional, stride, pad))
        };
        let layer = match kind.to_ascii_lowercase().as_str() {
            "conv" | "conv2d" => {
                let (Some(size), Some(act)) = (rest.first(), rest.get(1)) else {
                    return Err(err(item, "write conv FILTERSxKxK ACTIVATION, e.g. conv 20x5x5 relu"));
                };
                let dims: Vec<&str> = size.split(['x', 'X', '×']).collect();
                let [f, k1, k2] = dims.as_slice() else {
                    return Err(err(item, "the size is FILTERSxKxK, e.g. 20x5x5"));
                };
                let (f, k1, k2) = (num(item, f, "filters")?, num(item, k1, "kernel")?, num(item, k2, "kernel")?);
                if k1 != k2 {
                    return Err(err(item, "kernels are square: give KxK with equal sides"));
                }
                let (_, stride, padding) = options(rest, 2)?;
                let activation = Activation::parse(act)?;
                Layer::Conv2d { filters: f, kernel: k1, stride: stride.unwrap_or(1), padding, activation }
            }
            p @ ("maxpool" | "meanpool" | "avgpool") => {
                let Some(size) = rest.first() else {
                    return Err(err(item, "write maxpool K (or meanpool K), e.g. maxpool 2"));
                };
                let size = num(item, size, "size")?;
                let (_, stride, padding) = options(rest, 1)?;
                if padding != 0 {
                    return Err(err(item, "pooling takes no padding"));
                }
                let stride = stride.unwrap_or(size);
                if p == "maxpool" { Layer::MaxPool { size, stride } } else { Layer::MeanPool { size, stride } }
            }
            "dense" => {
                let (Some(units), Some(act), None) = (rest.first(), rest.get(1), rest.get(2)) else {
                    return Err(err(item, "write dense UNITS ACTIVATION, e.g. dense 500 relu"));
                };
                Layer::Dense { units: num(item, units, "units")?, activation: Activation::parse(act)? }
            }
            "maxout" => {
                let dims: Vec<&str> = rest.first().map(|s| s.split(['x', 'X', '×']).collect()).unwrap_or_default();
                let ([u, k], None) = (dims.as_slice(), rest.get(1)) else {
                    return Err(err(item, "write maxout UNITSxPIECES, e.g. maxout 240x5"));
                };
                Layer::Maxout { units: num(item, u, "units")?, pieces: num(item, k, "pieces")? }
            }
            "rnn" | "lstm" => {
                let lstm = kind.eq_ignore_ascii_case("lstm");
                let usage = if lstm {
                    "write lstm UNITS [per-step], e.g. lstm 128"
                } else {
                    "write rnn UNITS [tanh|relu] [per-step], e.g. rnn 64 tanh"
                };
                let Some((units, mut opts)) = rest.split_first() else { return Err(err(item, usage)) };
                let units = num(item, units, "units")?;
                let mut activation = Activation::Tanh;
                if !lstm
                    && let Some((act, more)) = opts.split_first().filter(|(a, _)| !a.eq_ignore_ascii_case("per-step"))
                {
                    activation = Activation::parse(act)?;
                    opts = more;
                }
                let per_step = match opts {
                    [] => false,
                    [p] if p.eq_ignore_ascii_case("per-step") => true,
                    _ => return Err(err(item, usage)),
                };
                if lstm { Layer::Lstm { units, per_step } } else { Layer::Rnn { units, activation, per_step } }
            }
            _ => {
                return Err(err(
                    item,
                    "unknown layer: use conv, maxpool, meanpool, dense, maxout, rnn or lstm (the output, e.g. softmax, comes last)",
                ));
            }
        };
        layers.push(layer);
    }
    // A recurrent layer under another one hands it every step.
    for i in 1..layers.len() {
        if layers[i].is_recurrent() {
            set_per_step(&mut layers[i - 1]);
        }
    }
    let mut words: Vec<&str> = last.split_whitespace().collect();
    if words.first().is_some_and(|w| w.eq_ignore_ascii_case("per-step")) {
        words.remove(0);
        match layers.last_mut() {
            Some(l) if l.is_recurrent() => set_per_step(l),
            _ => {
                return Err(err(last, "an output at every step needs a recurrent layer (rnn or lstm) right before it"));
            }
        }
    }
    let (output, outputs) = match words.as_slice() {
        [name] => (super::Output::parse(name)?, None),
        [name, n] => (super::Output::parse(name)?, Some(num(last, n, "outputs")?)),
        _ => {
            return Err(err(
                last,
                "the last item is the output: softmax, softmax N, or an activation and size (e.g. identity 3)",
            ));
        }
    };
    Ok(ParsedNet { layers, output, outputs })
}
