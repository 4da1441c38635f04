import Foundation

/// A layer ready for explanation: rule chosen, modified weights computed (once per model and rule).
enum PreparedLayer: @unchecked Sendable {
    case conv(PreparedConv)
    case relu
    /// Pooling layers keep their index in the model for error messages.
    case maxPool(Pool2d, index: Int)
    case avgPool(Pool2d, epsilon: Float, index: Int)
    /// Adaptive average pooling; `sum` multiplies by the window area (global sum pooling head).
    case adaptivePool(Int, Int, epsilon: Float, sum: Bool)
    case flatten
    /// The sum of its inputs; relevance split in proportion to the summands (LRP-epsilon).
    case add(epsilon: Float)
    /// Channel concatenation; relevance sliced back to the inputs.
    case concat
    /// Multiplication by a constant; relevance passes through.
    case scale(Float)
    /// A standalone batch norm y = s_c x + t_c (one not folded into a convolution), LRP-epsilon.
    case affine(scale: Buffer, shift: Buffer, epsilon: Float)
    /// Constant padding; relevance cropped back to the input.
    case pad(Padding3)
    /// A box of the input; relevance put back in place (zero elsewhere).
    case slice(Slice3)
    /// Element-wise max / min: winner-take-all, or a split a_k / stab(sum_j a_j) when `proportional`.
    case extremum(maximum: Bool, proportional: Bool, epsilon: Float)
    /// Sum / mean over axes: R_in = a / stab(z) R (LRP-epsilon on a linear map of unit weights).
    case reduce(Axes3, mean: Bool, epsilon: Float)
    /// LayerNorm, LN rule (sigma constant): LRP-epsilon on the linear map it then is; `exact`:
    /// x times the true gradient (the `gradient` rule).
    case layerNorm(LayerNorm, epsilon: Float, exact: Bool)
    /// GELU, identity rule: relevance passes unchanged; `exact`: x gelu'(x) / stab(gelu(x)) R.
    case gelu(epsilon: Float, exact: Bool)
    /// Self-attention of (q, k, v), AH rule: LRP-epsilon on o = A v with A constant, to v only;
    /// `exact`: also through the softmax to the queries and keys.
    case attention(heads: Int, epsilon: Float, exact: Bool)

    /// A label for profiles: the layer and its input shape.
    func name(_ s: Shape3) -> String {
        switch self {
        case let .conv(c):
            return c.isLinear ? "Linear(\(c.inChannels), \(c.outChannels))" + (s.width > 1 ? " @\(s.width) tokens" : "")
                : "Conv(\(c.inChannels), \(c.outChannels), \(c.kernelH)x\(c.kernelW)\(c.groups > 1 ? ", g\(c.groups)" : "")) "
                    + "\(c.rule) @\(s.height)x\(s.width)"
        case .relu: return "ReLU"
        case .maxPool: return "MaxPool @\(s.height)x\(s.width)"
        case .avgPool: return "AvgPool @\(s.height)x\(s.width)"
        case .adaptivePool: return "AdaptivePool @\(s.height)x\(s.width)"
        case .flatten: return "Flatten"
        case .add: return "Add @\(s.height)x\(s.width)"
        case .concat: return "Concat"
        case .scale: return "Mul"
        case .affine: return "BatchNorm @\(s.height)x\(s.width)"
        case .pad: return "Pad @\(s.height)x\(s.width)"
        case .slice: return "Slice @\(s.height)x\(s.width)"
        case let .extremum(maximum, _, _): return "\(maximum ? "Max" : "Min") @\(s.height)x\(s.width)"
        case let .reduce(axes, mean, _): return "\(mean ? "ReduceMean" : "ReduceSum")(\(axes)) @\(s.height)x\(s.width)"
        case .layerNorm: return "LayerNorm @\(s.width) tokens"
        case .gelu: return "Gelu"
        case let .attention(heads, _, _): return "Attention(\(heads) heads) @\(s.width) tokens"
        }
    }

    func outputShape(_ s: Shape3) throws -> Shape3 {
        switch self {
        case let .conv(c):
            if c.isLinear {
                guard s.channels == c.inChannels, s.height == 1 else {
                    throw BiLRPError.shapeMismatch(
                        what: "linear layer \(c.index) input", expected: "\(c.inChannels) features", found: "\(s)")
                }
                return Shape3(c.outChannels, 1, s.width)
            }
            return try Layer.conv2d(c.conv!).outputShape(s, index: c.index)
        case .relu: return s
        case let .maxPool(p, i): return try Layer.maxPool2d(p).outputShape(s, index: i)
        case let .avgPool(p, _, i): return try Layer.avgPool2d(p).outputShape(s, index: i)
        case let .adaptivePool(h, w, _, _): return Shape3(s.channels, h, w)
        case .flatten: return Shape3(s.count, 1, 1)
        case .add, .concat, .scale, .affine, .extremum, .layerNorm, .gelu, .attention: return s
        case let .pad(p): return p.outputShape(s)
        case let .slice(sl):
            guard let (_, box) = sl.resolve(s) else {
                throw BiLRPError.shapeMismatch(what: "slice \(sl.description)", expected: "a non-empty slice", found: "input \(s)")
            }
            return box
        case let .reduce(axes, _, _): return axes.reduce(s)
        }
    }
}

/// A node of the graph ready for explanation: its op and the numbers of the values it reads and
/// writes (0 is the model input).
struct PreparedNode: @unchecked Sendable {
    let name: String
    let op: PreparedLayer
    let inputs: [Int]
    let output: Int
}

/// A convolution or linear layer with its rule expanded into passes and its weights modified.
final class PreparedConv: @unchecked Sendable {
    struct Pass {
        var terms: [RuleTerm]
        var bias: Buffer?
        var epsilon: Float
        var scale: Float
        /// The pass is LRP-0 on the unmodified layer: its denominator is the forward output itself.
        var reusesForward: Bool
    }

    let index: Int
    let rule: Rule
    let isLinear: Bool
    let conv: Conv2d?
    /// The geometry without a spatial size (height and width 1): only the channels, kernel, stride,
    /// padding and groups matter to prepared weights; `geometry(_:)` adds an input's size.
    let weightGeometry: ConvGeometry
    var inChannels: Int { weightGeometry.inChannels }
    var outChannels: Int { weightGeometry.outChannels }
    var kernelH: Int { weightGeometry.kernelH }
    var kernelW: Int { weightGeometry.kernelW }
    var strideH: Int { weightGeometry.strideH }
    var strideW: Int { weightGeometry.strideW }
    var padH: Int { weightGeometry.padH }
    var padW: Int { weightGeometry.padW }
    var groups: Int { weightGeometry.groups }
    /// The layer's weights under the modifiers the rule uses, where the backend has no prepared
    /// form of them: a layer keeps its weights once in each form it runs (VGG-16 under the paper's
    /// rules: 2 x 59 MB fewer with packed forward weights and Winograd backward weights).
    let weights: [WeightModifier: Buffer]
    let bias: Buffer?
    let passes: [Pass]
    /// Backend-prepared backward weights per modifier (Winograd), when the backend has a fast path.
    let backward: [WeightModifier: Buffer]
    /// Every term of the backward has prepared weights (one fused kernel per term).
    let fusedBackward: Bool
    /// The backend has a sparse backward for this layer (`Kernels.lrpTermSparse`): the explainer
    /// may take it, per block, from the density of the relevance; its weights are prepared on first
    /// use (`sparseWeights`), since on most layers of most inputs the relevance is too dense
    /// (ResNet-50: 85 MB of weights never read).
    let sparseBackward: Bool
    /// Backend-prepared forward weights per modifier (packed), convolutions only: a linear layer's
    /// forward is one matrix-vector product, and a packed copy of a classifier's weight is 400 MB.
    let forward: [WeightModifier: Buffer]

    convenience init(index: Int, conv: Conv2d, rule: Rule, nonNegativeInput: Bool, kernels: any Kernels) throws {
        // Dilated layers run as the undilated convolution of their span (Conv2d.spanWeight); groups natively.
        try self.init(index: index, rule: rule, isLinear: false, conv: conv, weight: Buffer(conv.spanWeight()), bias: conv.bias,
                      geometry: ConvGeometry(inChannels: conv.inChannels, height: 1, width: 1, outChannels: conv.outChannels,
                                             kernelH: conv.spanH, kernelW: conv.spanW, strideH: conv.strideH,
                                             strideW: conv.strideW, padH: conv.padH, padW: conv.padW, groups: conv.groups),
                      nonNegativeInput: nonNegativeInput, kernels: kernels)
    }

    /// `packForward`: keep the forward's packed weight too (for a linear layer on the tokens of a
    /// sequence, which runs a GEMM per call; a layer on a vector runs one GEMV and needs none).
    convenience init(index: Int, linear: Linear, rule: Rule, nonNegativeInput: Bool, packForward: Bool = false,
                     kernels: any Kernels) throws {
        try self.init(linear: Buffer(linear.weight), bias: linear.bias, inFeatures: linear.inFeatures,
                  outFeatures: linear.outFeatures, index: index, rule: rule, nonNegativeInput: nonNegativeInput,
                  packForward: packForward, kernels: kernels)
    }

    /// A linear layer whose (out, in) weight is already in a buffer, which it keeps (a similarity
    /// head of 1000 x 524288 is 2 GB: copying it would take seconds).
    convenience init(linear weight: Buffer, bias: [Float]?, inFeatures: Int, outFeatures: Int, index: Int, rule: Rule,
                     nonNegativeInput: Bool, packForward: Bool = false, kernels: any Kernels) throws {
        precondition(weight.count == inFeatures * outFeatures)
        try self.init(index: index, rule: rule, isLinear: true, conv: nil, weight: weight, bias: bias,
                      geometry: ConvGeometry(inChannels: inFeatures, height: 1, width: 1, outChannels: outFeatures,
                                             kernelH: 1, kernelW: 1),
                      nonNegativeInput: nonNegativeInput, packForward: packForward, kernels: kernels)
    }

    private init(
        index: Int, rule: Rule, isLinear: Bool, conv: Conv2d?, weight: Buffer, bias: [Float]?, geometry geo: ConvGeometry,
        nonNegativeInput: Bool, packForward: Bool = false, kernels: any Kernels
    ) throws {
        self.index = index; self.rule = rule; self.isLinear = isLinear; self.conv = conv
        weightGeometry = geo
        let rulePasses = rule.passes(nonNegativeInput: nonNegativeInput)
        var weights: [WeightModifier: Buffer] = [.identity: weight]
        for pass in rulePasses {
            for term in pass.terms where weights[term.weight] == nil {
                if let conv, !conv.isUndilated {
                    weights[term.weight] = Buffer(conv.spanWeight(term.weight))
                    continue
                }
                let modified = Buffer(count: weight.count)
                for i in 0..<weight.count { modified.pointer[i] = term.weight.apply(weight.pointer[i]) }
                weights[term.weight] = modified
            }
        }
        self.bias = bias.map(Buffer.init)
        var backward: [WeightModifier: Buffer] = [:], forward: [WeightModifier: Buffer] = [:]
        if !isLinear || packForward {
            for (m, w) in weights {
                forward[m] = Self.preparedForward(w, geo, kernels)
            }
        }
        if !isLinear {
            for pass in rulePasses {
                for term in pass.terms where backward[term.weight] == nil {
                    backward[term.weight] = try Self.preparedBackward(weights[term.weight]!, geo, kernels)
                }
            }
        }
        self.backward = backward
        self.forward = forward
        let backwardModifiers = Set(rulePasses.flatMap { $0.terms.map(\.weight) })
        let fused = !backwardModifiers.isEmpty && backwardModifiers.allSatisfy { backward[$0] != nil }
        fusedBackward = fused
        sparseBackward = !isLinear && !backwardModifiers.isEmpty && kernels.hasSparseBackward(geo)
        self.weights = weights.filter { m, _ in forward[m] == nil || (!fused && backwardModifiers.contains(m)) }
        passes = rulePasses.map { p in
            let reuse = p.terms == [RuleTerm(input: .identity, weight: .identity)] && p.bias == .identity
            let b = p.bias.flatMap { m in bias.map { Buffer($0.map(m.apply)) } }
            return Pass(terms: p.terms, bias: b, epsilon: p.epsilon, scale: p.scale, reusesForward: reuse)
        }
    }

    /// The backend's prepared forward form of w, written straight into a buffer (a [Float] in
    /// between, then copied, was a third of VGG-16's explainer start-up).
    private static func preparedForward(_ w: Buffer, _ g: ConvGeometry, _ kernels: any Kernels) -> Buffer? {
        guard let count = kernels.forwardFormCount(g), w.count == g.weightCount else { return nil }
        let b = Buffer(count: count)
        kernels.writeForwardForm(weight: w.const, g, into: b.pointer)
        return b
    }

    /// As `preparedForward`, the backward's form (Winograd weights).
    private static func preparedBackward(_ w: Buffer, _ g: ConvGeometry, _ kernels: any Kernels) throws -> Buffer? {
        guard let count = kernels.backwardFormCount(g) else { return nil }
        let b = Buffer(count: count)
        try kernels.writeBackwardForm(weight: w.const, g, into: b.pointer)
        return b
    }

    /// Bytes of its weights in every form it keeps (see `Explainer.preparedBytes`).
    var preparedBytes: Int {
        let buffers = Array(weights.values) + Array(backward.values) + Array(forward.values)
            + passes.compactMap(\.bias) + [bias].compactMap { $0 }
            + lazyFormsLock.withLock { winogradForwardCache.values.compactMap { $0 } + Array(sparseCache.values) }
        return buffers.reduce(0) { $0 + $1.count * MemoryLayout<Float>.stride }
    }

    /// Terms over all passes: each is one convolution, forward or backward.
    var termCount: Int { passes.reduce(0) { $0 + $1.terms.count } }

    /// Winograd forward weights per modifier for the patch side (`Explainer.patchSide`), prepared on
    /// first use: only the layers the patch side reaches need them (VGG-16 at 128 x 128: conv1-3,
    /// 28 MB; for every layer they would be 235 MB per modifier).
    private var winogradForwardCache: [WeightModifier: Buffer?] = [:]
    private let lazyFormsLock = NSLock()

    /// The sparse backward's weights under a modifier, prepared on first use (`sparseBackward`).
    private var sparseCache: [WeightModifier: Buffer] = [:]

    func sparseWeights(_ m: WeightModifier, _ kernels: any Kernels) -> Buffer {
        lazyFormsLock.lock()
        defer { lazyFormsLock.unlock() }
        if let cached = sparseCache[m] { return cached }
        guard let conv, let u = kernels.prepareSparseBackward(weight: conv.spanWeight(m), weightGeometry) else {
            preconditionFailure("sparseWeights on a layer without a sparse backward")
        }
        let b = Buffer(u)
        sparseCache[m] = b
        return b
    }

    func winogradForward(_ m: WeightModifier, _ kernels: any Kernels) throws -> Buffer? {
        guard let conv else { return nil }
        lazyFormsLock.lock()
        defer { lazyFormsLock.unlock() }
        if let cached = winogradForwardCache[m] { return cached }
        let u = try kernels.prepareWinogradForward(weight: conv.spanWeight(m), weightGeometry).map(Buffer.init)
        winogradForwardCache[m] = .some(u)
        return u
    }

    /// The layer's forward under a weight modifier, with the prepared weight when there is one.
    ///
    /// Always direct, never Winograd: the forward's outputs are the rules' denominators z, and R
    /// divides by them. Winograd on the maps of 32 x 32 and larger made a VGG-16 pair 8 % faster
    /// at 224 x 224, but its rounding (about 5e-6 of the largest output, absolute) is large
    /// against small |z|: R against the PyTorch float64 fixture (VGG-16 features[:10]) was off by
    /// 11x (paper-vgg) to 160x (LRP-0) the 1e-4 tolerance the direct forward meets.
    func forward(_ x: UnsafePointer<Float>, _ g: ConvGeometry, _ m: WeightModifier, bias: UnsafePointer<Float>?,
                 _ y: UnsafeMutablePointer<Float>, _ kernels: any Kernels) throws {
        if let p = forward[m] {
            try kernels.convForward(x, g, prepared: p.const, bias: bias, y)
        } else {
            try kernels.convForward(x, g, weight: weights[m]!.const, bias: bias, y)
        }
    }

    func geometry(_ s: Shape3) -> ConvGeometry {
        if isLinear {  // on a vector (width 1) or on every token of a sequence: a 1 x 1 convolution
            return ConvGeometry(inChannels: inChannels, height: 1, width: s.width, outChannels: outChannels,
                                kernelH: 1, kernelW: 1)
        }
        var g = weightGeometry
        g.height = s.height; g.width = s.width
        return g
    }
}
