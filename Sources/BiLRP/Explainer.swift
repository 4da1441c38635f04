/// Explains a similarity model y(x, x') = <phi(x), phi(x')> with BiLRP.
///
/// Construction does the per-model work once: BatchNorm folding, rule selection, and the modified
/// weights rho(W) of every rule term. Each explanation then runs one forward per input (keeping
/// activations, max-pool winners and the rule denominators) and one backward for all h outputs at
/// once, in blocks of maps so that memory stays bounded as h grows. Because LRP is linear in the
/// relevance, the block backward is exactly h first-order LRP passes.
///
/// ```swift
/// let model = try VGG.vgg16.features(layers: 31, weights: try SafetensorsFile(path: "vgg16.safetensors"))
/// let explainer = try Explainer(model: model, head: .randomProjection(outputs: 100, seed: 0),
///                               composite: try .preset("paper-vgg"), bounds: Preprocessing.torchvision.bounds)
/// let pair = try explainer.explain(x1, x2, patch: 8)
/// print(pair.similarity, pair.conservation.relativeError, pair.topPositive(5))
/// ```
///
/// An `Explainer` is immutable and safe to share between threads.
public final class Explainer: @unchecked Sendable {
    public let head: SimilarityHead
    public let similarity: Similarity
    public let composite: Composite
    public let bounds: InputBounds?
    /// Maps per backward block; nil chooses from `memoryBudget`.
    public let blockSize: Int?
    /// Bytes the relevance blocks may use (default 256 MiB).
    public let memoryBudget: Int
    public let kernels: any Kernels
    /// The rule chosen for each conv/linear node, by its index (the layer index of a chain, the
    /// node's position in the graph as given otherwise, before batch norms were folded).
    public let rules: [Int: Rule]
    /// The rule chosen for each conv/linear node and each Max / Min, LayerNorm, GELU and attention
    /// node, by node name.
    public let nodeRules: [String: Rule]
    /// The graph explained, canonized (batch norms folded, dropout and identities removed).
    public let graph: Graph
    /// Bounds on h and on the estimated memory of one explanation, checked before it allocates.
    public let limits: ResourceLimits

    /// The model's nodes, ready for explanation; values are numbered, 0 the input.
    let nodes: [PreparedNode]
    /// The values' names in the graph, by number.
    let valueNames: [String]
    var valueCount: Int { valueNames.count }
    let outputValue: Int
    /// The channels (features) the first convolution (linear layer) reading the input expects.
    let inputChannels: Int?
    /// A linear layer reads the input: it is a sequence (tokens, features); a convolution: an image.
    let sequenceInput: Bool?

    /// - Parameters:
    ///   - model: the feature extractor F (already truncated), as a chain of layers.
    ///   - head: the linear map H to the h outputs phi.
    ///   - composite: rules per layer.
    ///   - bounds: input domain bounds; required when the composite uses z^B.
    ///   - kernels: the arithmetic (the C kernels by default; `ReferenceKernels` for checking).
    ///   - limits: h and memory bounds; an input over them is an error before anything is allocated.
    public convenience init(
        model: SequentialModel, head: SimilarityHead = .randomProjection(outputs: 100, seed: 0),
        similarity: Similarity = .dot, composite: Composite, bounds: InputBounds? = nil,
        blockSize: Int? = nil, memoryBudget: Int = 256 << 20, kernels: any Kernels = CKernelsBackend(),
        limits: ResourceLimits = .default
    ) throws {
        try self.init(graph: Graph(chain: model), head: head, similarity: similarity, composite: composite,
                      bounds: bounds, blockSize: blockSize, memoryBudget: memoryBudget, kernels: kernels,
                      limits: limits)
    }

    /// An explainer of any model graph (a ResNet, an ONNX DAG); the head reads the graph's output.
    public init(
        graph model: Graph, head: SimilarityHead = .randomProjection(outputs: 100, seed: 0),
        similarity: Similarity = .dot, composite: Composite, bounds: InputBounds? = nil,
        blockSize: Int? = nil, memoryBudget: Int = 256 << 20, kernels: any Kernels = CKernelsBackend(),
        limits: ResourceLimits = .default
    ) throws {
        // A node without a chain index gets its position in the graph as given (what `bilrp
        // inspect` lists), before canonization removes batch norms and dropouts.
        let chain = model.nodes.allSatisfy { $0.index != nil }
        let graph = try Graph(input: model.input, nodes: model.nodes.enumerated().map { i, n in
            var n = n
            if n.index == nil { n.index = i }
            return n
        }, output: model.output).canonized()
        guard !graph.nodes.isEmpty else { throw BiLRPError.invalidArgument("the model has no layers") }
        if let blockSize, blockSize < 1 { throw BiLRPError.invalidArgument("block size must be at least 1") }
        var ids = [graph.input: 0]
        for n in graph.nodes { ids[n.output] = ids.count }
        let weighted = graph.nodes.indices.filter { graph.nodes[$0].op.isWeighted }
        var rules: [Int: Rule] = [:], nodeRules: [String: Rule] = [:]
        var prepared: [PreparedNode] = []
        var nonNegative = [Bool](repeating: false, count: ids.count)
        var channels: Int? = nil, sequenceInput: Bool? = nil
        for (position, node) in graph.nodes.enumerated() {
            let inputs = node.inputs.map { ids[$0]! }, output = ids[node.output]!
            let index = node.index!
            let rule = composite.rule(
                index: index, name: node.name, op: node.op,
                isFirst: position == weighted.first, isLast: position == weighted.last)
            let nonNegativeInput = inputs.allSatisfy { nonNegative[$0] }
            let label = chain ? "layer \(index)" : "node '\(node.name)'"
            if node.op.isWeighted, !rule.appliesToWeightedLayers {
                throw BiLRPError.invalidComposite(
                    "rule \(rule) at \(label) (\(node.op.name)) is for \(rule == .gradient ? "LayerNorm, GELU and attention" : "Max and Min") nodes only")
            }
            let op: PreparedLayer
            switch node.op {
            case let .layer(.conv2d(conv)):
                if channels == nil, inputs == [0] { channels = conv.inChannels; sequenceInput = false }
                if rule == .zBox {
                    guard let bounds else {
                        throw BiLRPError.invalidArgument(
                            "rule zb at \(label) needs input bounds: give a preprocessing (torchvision or caffe) or explicit bounds")
                    }
                    guard bounds.lower.count == conv.inChannels else {
                        throw BiLRPError.shapeMismatch(
                            what: "input bounds for zb at \(label)", expected: "\(conv.inChannels) channels",
                            found: "\(bounds.lower.count)")
                    }
                }
                rules[index] = rule; nodeRules[node.name] = rule
                op = .conv(try PreparedConv(index: index, conv: conv, rule: rule, nonNegativeInput: nonNegativeInput,
                                            kernels: kernels))
            case let .layer(.linear(lin)):
                if channels == nil, inputs == [0] { channels = lin.inFeatures; sequenceInput = true }
                if rule == .zBox { throw BiLRPError.unsupported("rule zb on linear \(label)") }
                rules[index] = rule; nodeRules[node.name] = rule
                op = .conv(try PreparedConv(index: index, linear: lin, rule: rule, nonNegativeInput: nonNegativeInput,
                                            packForward: sequenceInput == true, kernels: kernels))
            case .layer(.relu):
                op = .relu
            case let .layer(.maxPool2d(p)):
                op = .maxPool(p, index: index)
            case let .layer(.avgPool2d(p)):
                op = .avgPool(p, epsilon: rule.parameterFreeEpsilon, index: index)
            case let .layer(.adaptiveAvgPool2d(h, w)):
                op = .adaptivePool(h, w, epsilon: rule.parameterFreeEpsilon, sum: false)
            case .layer(.flatten):
                op = .flatten
            case let .layer(.batchNorm2d(bn)):
                let (scale, shift) = bn.affine
                op = .affine(scale: Buffer(scale), shift: Buffer(shift), epsilon: rule.parameterFreeEpsilon)
            case .layer(.dropout), .layer(.identity):
                preconditionFailure("removed by canonization")
            case .add:
                op = .add(epsilon: rule.parameterFreeEpsilon)
            case .concat:
                op = .concat
            case let .scale(k):
                op = .scale(k)
            case let .pad(p):
                op = .pad(p)
            case let .slice(sl):
                op = .slice(sl)
            case .maximum, .minimum:
                nodeRules[node.name] = rule
                op = .extremum(maximum: node.op == .maximum, proportional: rule == .proportional,
                               epsilon: Rule.defaultEpsilon)
            case let .reduce(axes, mean):
                op = .reduce(axes, mean: mean, epsilon: rule.parameterFreeEpsilon)
            case let .layerNorm(ln):
                if channels == nil, inputs == [0] { channels = ln.features; sequenceInput = true }
                nodeRules[node.name] = rule
                op = .layerNorm(ln, epsilon: rule.parameterFreeEpsilon, exact: rule == .gradient)
            case .gelu:
                nodeRules[node.name] = rule
                op = .gelu(epsilon: rule.parameterFreeEpsilon, exact: rule == .gradient)
            case let .attention(heads):
                nodeRules[node.name] = rule
                op = .attention(heads: heads, epsilon: rule.parameterFreeEpsilon, exact: rule == .gradient)
            }
            // Which values are known to be >= 0: a conv after them drops its negative-input terms.
            switch node.op {
            case .layer(.relu): nonNegative[output] = true
            case .layer(.maxPool2d), .layer(.avgPool2d), .layer(.adaptiveAvgPool2d), .layer(.flatten), .add, .concat,
                 .slice, .maximum, .minimum, .reduce:
                nonNegative[output] = nonNegativeInput
            case let .pad(p): nonNegative[output] = nonNegativeInput && p.value >= 0
            case let .scale(k): nonNegative[output] = nonNegativeInput && k >= 0
            default: break
            }
            prepared.append(PreparedNode(name: node.name, op: op, inputs: inputs, output: output))
        }
        for case let (.pattern(p), _) in composite.entries where !graph.nodes.contains(where: { Composite.glob(p, matches: $0.name) }) {
            throw BiLRPError.invalidComposite(
                "selector '\(p)' matches no node of the model (nodes: \(graph.nodes.prefix(4).map(\.name).joined(separator: ", "))\(graph.nodes.count > 4 ? ", ..." : ""); `bilrp inspect` lists them)")
        }
        self.nodes = prepared
        self.valueNames = [graph.input] + graph.nodes.map(\.output)
        self.outputValue = ids[graph.output]!
        self.graph = graph
        self.inputChannels = channels
        self.sequenceInput = sequenceInput
        self.rules = rules
        self.nodeRules = nodeRules
        self.head = head
        self.similarity = similarity
        self.composite = composite
        self.bounds = bounds
        self.blockSize = blockSize
        self.memoryBudget = memoryBudget
        self.kernels = kernels
        self.limits = limits
    }

    // MARK: - Public API

    /// phi(x), the h outputs of the head.
    public func embedding(_ x: Tensor) throws -> [Float] {
        try forward(x, patch: nil, explaining: false).output.array
    }

    /// The relevance factors of one input: the h first-order maps LRP(phi_m, x), summed over color
    /// channels and sum-pooled to `patch` x `patch` patches (patch 1: unpooled), as the P x h matrix A.
    /// Depends on x alone, so it can be cached and reused against any other input.
    ///
    /// Throws `BiLRPError.limitExceeded` before allocating when h or the estimated memory exceed
    /// `limits`, and `BiLRPError.cancelled` within one layer of `cancellation` being set.
    public func factors(_ x: Tensor, patch: Int = 8, cancellation: Cancellation? = nil) throws -> RelevanceFactors {
        try factors(x, patch: patch, profile: nil, cancellation: cancellation)
    }

    /// `factors` with wall-clock seconds per step: the forward pass, and the backward pass per layer
    /// (summed over blocks). For the benchmark harness.
    public func profiledFactors(_ x: Tensor, patch: Int = 8) throws -> (RelevanceFactors, ExplainerProfile) {
        let profile = ExplainerProfile()
        let f = try factors(x, patch: patch, profile: profile)
        return (f, profile)
    }

    func factors(_ x: Tensor, patch: Int, profile: ExplainerProfile?, pool: BufferPool = BufferPool(),
                 cancellation: Cancellation? = nil) throws -> RelevanceFactors {
        guard patch >= 1 else { throw BiLRPError.invalidArgument("patch size must be at least 1 (got \(patch))") }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let trace = try forward(x, patch: patch, cancellation: cancellation)
        profile?.forwardSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        let h = trace.output.count
        let shape = trace.inputShape
        let grid = PatchGrid(height: shape.height, width: shape.width, patch: patch)
        let P = grid.count
        if useTokenSide(trace, patches: P, outputs: h) {
            // A sequence with fewer token runs than outputs: the whole graph from the token side.
            let A = try tokenSideFactors(trace, grid, cancellation: cancellation)
            return RelevanceFactors(a: A, outputs: h, grid: grid, inputShape: shape, embedding: trace.output.array)
        }
        var A = [Float](repeating: 0, count: P * h)
        // The first k layers from the patch side (PatchSide.swift), the rest by the backward.
        let k = patchSidePlan(trace, patch: patch, outputs: h)
        if let profile, profile.layers.isEmpty {
            profile.layers = trace.plan.nodes.enumerated().map { (i, n) in (n.op.name(trace.shapes[i]), 0) }
        }
        profile?.patchSideLayers = k
        var sides = k > 0 ? try patchSide(trace, grid, layers: k, profile: profile, pool: pool) : []
        let meet = trace.shapes[k]  // where the patch side meets the maps
        let packed = k > 0 ? packPatchSide(sides, grid, channels: meet.channels, map: (meet.height, meet.width)) : nil
        if packed != nil { sides = [] }
        profile?.packedCells = packed != nil
        let block = blockSize(for: trace, outputs: h, from: k)
        let pooled = k > 0 ? nil : Buffer(count: block * P)
        var m0 = 0
        while m0 < h {
            try cancellation?.check()
            let n = min(block, h - m0)
            let start = pool.take(n * h)
            start.pointer.initialize(repeating: 0, count: n * h)
            for i in 0..<n { start.pointer[i * h + m0 + i] = trace.output.pointer[m0 + i] }
            let r = try backward(trace, start, n: n, through: k, profile: profile, pool: pool, cancellation: cancellation)
            if k > 0 {
                try A.withUnsafeMutableBufferPointer { a in
                    if let packed {
                        try kernels.cellsContract(channels: meet.channels, map: (meet.height, meet.width), packed.layout,
                                              packed: packed.packed.const, n: n, r.const, a.baseAddress! + m0, lda: h)
                    }
                    for side in sides {
                        try kernels.cellsContract(channels: meet.channels, map: (meet.height, meet.width), side.layout,
                                              side.v.const, n: n, r.const, a.baseAddress! + side.first * h + m0, lda: h)
                    }
                }
            } else if let pooled {
                kernels.patchPool(n: n, r.const, shape, patch: patch, pooled.pointer)
                for i in 0..<n { for p in 0..<P { A[p * h + m0 + i] = pooled.pointer[i * P + p] } }
            }
            pool.give(r)
            m0 += n
        }
        return RelevanceFactors(a: A, outputs: h, grid: grid, inputShape: shape, embedding: trace.output.array)
    }

    /// First-order LRP of one input for an output relevance vector r (length h; e.g. e_m phi_m, or
    /// phi(x') to explain the similarity with x' held fixed), at full resolution: (C, H, W), or
    /// (tokens, features) for a sequence.
    public func relevance(_ x: Tensor, outputRelevance r: [Float], cancellation: Cancellation? = nil) throws -> Tensor {
        let trace = try forward(x, patch: nil, cancellation: cancellation)
        guard r.count == trace.output.count else {
            throw BiLRPError.shapeMismatch(
                what: "output relevance", expected: "\(trace.output.count) values (h)", found: "\(r.count)")
        }
        let out = try backward(trace, Buffer(r), n: 1, cancellation: cancellation)
        let shape = trace.inputShape
        return try Tensor.unstored(Array(UnsafeBufferPointer(start: out.const, count: shape.count)), shape, like: x)
    }

    /// The BiLRP explanation of y(x, x'): R = A(x) A(x')^T over patch pairs, with the marginals,
    /// the conservation report and the top pairs.
    public func explain(_ x: Tensor, _ xPrime: Tensor, patch: Int = 8) throws -> PairExplanation {
        let pool = BufferPool()
        return try explain(factors(x, patch: patch, profile: nil, pool: pool),
                           factors(xPrime, patch: patch, profile: nil, pool: pool))
    }

    /// The pair explanation from cached factors: one P x h by h x Q product.
    public func explain(_ a: RelevanceFactors, _ b: RelevanceFactors) throws -> PairExplanation {
        guard a.outputs == b.outputs else {
            throw BiLRPError.shapeMismatch(what: "factors", expected: "the same h", found: "\(a.outputs) and \(b.outputs)")
        }
        let h = a.outputs, P = a.grid.count, Q = b.grid.count
        let bytes = P.multipliedReportingOverflow(by: Q).partialValue.multipliedReportingOverflow(by: 4)
        if bytes.overflow || bytes.partialValue > limits.maxBytes {
            throw BiLRPError.limitExceeded(
                "the pair matrix R would be \(P) x \(Q) patches, more than the memory limit of \(ResourceLimits.megabytes(limits.maxBytes))")
        }
        var R = [Float](repeating: 0, count: P * Q)
        try a.a.withUnsafeBufferPointer { pa in
            try b.a.withUnsafeBufferPointer { pb in
                try R.withUnsafeMutableBufferPointer { pr in
                    try kernels.pairProduct(p: P, q: Q, h: h, pa.baseAddress!, pb.baseAddress!, pr.baseAddress!)
                }
            }
        }
        let (dot, scale) = similarity.dotAndScale(a.embedding, b.embedding)
        if similarity == .cosine {
            let s = Float(scale)
            for i in R.indices { R[i] *= s }
        }
        return PairExplanation(
            relevance: R, first: a, second: b, dot: Float(dot), similarity: Float(dot * scale), scale: Float(scale))
    }

    // MARK: - Forward

    struct Trace {
        var inputShape: Shape3
        /// The nodes this input ran through (the model's and the head's) and every value's shape.
        var plan: ExecutionPlan
        /// Per node: the activation of its first input and that input's shape (the patch side and
        /// the cost model read these on the leading chain).
        var inputs: [Buffer] = []
        var shapes: [Shape3] = []
        /// Per value: its activation (value 0 the input).
        var values: [Buffer?] = []
        var valueShapes: [Shape3] { plan.shapes }
        /// Per node: conv denominators (one per pass) and modified inputs; pooling outputs; argmax.
        var denominators: [[Buffer]] = []
        var modifiedInputs: [[InputModifier: Buffer]] = []
        var argmax: [IndexBuffer?] = []
        var output: Buffer
        var outputShape: Shape3
    }

    /// The layers that compute phi from the model's output: the head's.
    func headLayers(after shape: Shape3, cancellation: Cancellation? = nil) throws -> [PreparedLayer] {
        switch head {
        case .identity:
            return [.flatten]
        case .sumPool:
            return [.adaptivePool(1, 1, epsilon: Rule.defaultEpsilon, sum: true)]
        case .averagePool:
            return [.adaptivePool(1, 1, epsilon: Rule.defaultEpsilon, sum: false)]
        case let .randomProjection(h, seed):
            let d = shape.count
            let w = Buffer(count: h * d)
            try SimilarityHead.drawGaussian(into: w.pointer, outputs: h, inputs: d, seed: seed, cancellation: cancellation)
            return [.flatten, .conv(try PreparedConv(linear: w, bias: nil, inFeatures: d, outFeatures: h, index: -1,
                                                 rule: .zero, nonNegativeInput: false, kernels: kernels))]
        case let .projection(t):
            let (m, _) = try SimilarityHead.orientProjection(t, featureCount: shape.count)
            return [.flatten, .conv(try PreparedConv(
                index: -1, linear: try Linear(weight: m.data, bias: nil, inFeatures: shape.count, outFeatures: m.shape[0]),
                rule: .zero, nonNegativeInput: false, kernels: kernels))]
        }
    }

    /// Cache of head layers per feature shape (the random projection is drawn once per shape).
    let headCache = HeadCache()

    /// The model's nodes and the head's for an input shape, with the value bookkeeping.
    func plan(for input: Shape3, cancellation: Cancellation? = nil) throws -> ExecutionPlan {
        let byName = try graph.shapes(for: input)  // errors name the node that does not fit
        var shapes = valueNames.map { byName[$0]! }
        let s = shapes[outputValue]
        let head: [PreparedLayer]
        if let cached = headCache.get(s) {
            head = cached
        } else {
            head = try headLayers(after: s, cancellation: cancellation)
            headCache.set(s, head)
        }
        var all = nodes
        var v = outputValue
        for (i, l) in head.enumerated() {
            all.append(PreparedNode(name: "head.\(i)", op: l, inputs: [v], output: valueCount + i))
            shapes.append(try l.outputShape(shapes[v]))
            v = valueCount + i
        }
        return ExecutionPlan(nodes: all, shapes: shapes, output: v)
    }

    /// The forward pass. `patch` is the factors' patch size for the limits check (nil: no factors,
    /// only the embedding or a full-resolution map), which runs before anything is allocated.
    /// `explaining: false` skips the rules' extra passes (their denominators): phi alone.
    func forward(_ x: Tensor, patch: Int?, explaining: Bool = true, cancellation: Cancellation? = nil) throws -> Trace {
        switch (sequenceInput, x.shape.count) {
        case (true, let r) where r != 2:
            throw BiLRPError.shapeMismatch(what: "input", expected: "2 dimensions (tokens, features)", found: "\(x.shape)")
        case (false, let r) where r != 3:
            throw BiLRPError.shapeMismatch(what: "input", expected: "3 dimensions (C, H, W)", found: "\(x.shape)")
        default: break
        }
        let (shape, data) = try x.stored()
        if let c = inputChannels, c != shape.channels {
            throw BiLRPError.shapeMismatch(
                what: x.shape.count == 2 ? "input features" : "input channels", expected: "\(c)", found: "\(shape.channels)")
        }
        guard shape.height > 0, shape.width > 0 else {
            throw BiLRPError.shapeMismatch(what: "input", expected: "a non-empty image or sequence", found: "\(x.shape)")
        }
        try limits.check(requirements(for: shape, patch: patch ?? max(shape.height, shape.width)))
        let plan = try plan(for: shape, cancellation: cancellation)
        let input = Buffer(data)
        var trace = Trace(inputShape: shape, plan: plan, output: input, outputShape: shape)
        trace.values = [Buffer?](repeating: nil, count: plan.valueCount)
        trace.values[0] = input
        for node in plan.nodes {
            try cancellation?.check()
            let ins = node.inputs.map { trace.values[$0]! }
            let inShapes = node.inputs.map { plan.shapes[$0] }
            let a = ins[0], s = inShapes[0]
            let next = plan.shapes[node.output]
            trace.inputs.append(a)
            trace.shapes.append(s)
            var dens: [Buffer] = []
            var mods: [InputModifier: Buffer] = [:]
            var arg: IndexBuffer? = nil
            let y: Buffer
            switch node.op {
            case let .conv(c):
                let g = c.geometry(s)
                y = Buffer(count: g.outCount)
                try c.forward(a.const, g, .identity, bias: c.bias?.const, y.pointer, kernels)
                for pass in c.passes where explaining {
                    if pass.reusesForward { dens.append(y); continue }
                    let z = Buffer(count: g.outCount)
                    for (t, term) in pass.terms.enumerated() {
                        let input = try modifiedInput(term.input, a, s, &mods)
                        let tmp = t == 0 ? z : Buffer(count: g.outCount)
                        try c.forward(input.const, g, term.weight, bias: t == 0 ? pass.bias?.const : nil, tmp.pointer,
                                  kernels)
                        if t > 0 { for i in 0..<g.outCount { z.pointer[i] += tmp.pointer[i] } }
                    }
                    dens.append(z)
                }
            case .relu:
                y = Buffer(count: s.count)
                kernels.clamp(count: s.count, a.const, positive: true, y.pointer)
            case let .maxPool(p, _):
                let g = PoolGeometry(channels: s.channels, height: s.height, width: s.width, pool: p)
                y = Buffer(count: g.outCount)
                let am = IndexBuffer(count: g.outCount)
                kernels.maxPoolForward(a.const, g, y.pointer, argmax: am.pointer)
                arg = am
            case let .avgPool(p, _, _):
                let g = PoolGeometry(channels: s.channels, height: s.height, width: s.width, pool: p)
                y = Buffer(count: g.outCount)
                kernels.avgPoolForward(a.const, g, y.pointer)
                dens.append(y)
            case let .adaptivePool(oh, ow, _, sum):
                let g = PoolGeometry(channels: s.channels, height: s.height, width: s.width, adaptiveTo: oh, ow)
                y = Buffer(count: g.outCount)
                kernels.adaptiveAvgPoolForward(a.const, g, y.pointer)
                if sum { let k = Float(s.height * s.width); for i in 0..<y.count { y.pointer[i] *= k } }
                dens.append(y)
            case .flatten:
                y = a
            case .add:
                y = Buffer(count: s.count)
                y.pointer.update(from: a.const, count: s.count)
                for b in ins.dropFirst() {
                    kernels.lrpProduct(n: 1, count: s.count, nil, b.const, scale: 1, y.pointer, accumulate: true)
                }
                dens.append(y)
            case .concat:
                y = Buffer(count: next.count)
                var offset = 0
                for (b, bs) in zip(ins, inShapes) {
                    (y.pointer + offset).update(from: b.const, count: bs.count)
                    offset += bs.count
                }
            case let .scale(k):
                y = Buffer(count: s.count)
                kernels.lrpProduct(n: 1, count: s.count, nil, a.const, scale: k, y.pointer, accumulate: false)
            case let .affine(scale, shift, _):
                // y = s_c x + t_c; the backward divides by y and multiplies by s_c x (kept).
                y = Buffer(count: s.count)
                let sx = Buffer(count: s.count)
                let plane = s.height * s.width
                for c in 0..<s.channels {
                    let k = scale.pointer[c], t = shift.pointer[c]
                    for i in (c * plane)..<((c + 1) * plane) {
                        sx.pointer[i] = k * a.pointer[i]
                        y.pointer[i] = sx.pointer[i] + t
                    }
                }
                dens.append(y)
                dens.append(sx)
            case let .pad(p):
                y = Buffer(count: next.count)
                y.pointer.initialize(repeating: p.value, count: next.count)
                kernels.copyBox(n: 1, a.const, s, at: .zero, y.pointer, next, at: p.before, box: s, accumulate: false)
            case let .slice(sl):
                y = Buffer(count: next.count)
                kernels.copyBox(n: 1, a.const, s, at: sl.resolve(s)!.at, y.pointer, next, at: .zero, box: next,
                                accumulate: false)
            case let .extremum(maximum, proportional, _):
                y = Buffer(count: s.count)
                let winner = IndexBuffer(count: s.count)
                kernels.extremumForward(ins.map(\.const), count: s.count, maximum: maximum, y.pointer,
                                        winner: winner.pointer)
                arg = winner
                if proportional {
                    // The split's denominator: the sum of the inputs.
                    let z = Buffer(count: s.count)
                    z.pointer.update(from: a.const, count: s.count)
                    for b in ins.dropFirst() {
                        kernels.lrpProduct(n: 1, count: s.count, nil, b.const, scale: 1, z.pointer, accumulate: true)
                    }
                    dens.append(z)
                }
            case let .reduce(axes, mean, _):
                y = Buffer(count: next.count)
                kernels.reduceForward(a.const, s, axes: axes, scale: mean ? 1 / Float(axes.count(s)) : 1, y.pointer)
                dens.append(y)
            case let .layerNorm(ln, _, _):
                y = Buffer(count: s.count)
                let inverseSigma = Buffer(count: s.height * s.width)
                kernels.layerNormForward(a.const, s, ln, y.pointer, inverseSigma: inverseSigma.pointer)
                dens.append(y)
                dens.append(inverseSigma)
            case let .gelu(_, exact):
                y = Buffer(count: s.count)
                kernels.geluForward(a.const, count: s.count, y.pointer)
                if exact {
                    let slope = Buffer(count: s.count)  // x gelu'(x)
                    kernels.geluInputTimesSlope(a.const, count: s.count, slope.pointer)
                    dens.append(y)
                    dens.append(slope)
                }
            case let .attention(heads, _, _):
                y = Buffer(count: s.count)
                let weights = Buffer(count: heads * s.width * s.width)
                try kernels.attentionForward(q: a.const, k: ins[1].const, v: ins[2].const, s, heads: heads, y.pointer,
                                             weights: weights.pointer)
                dens.append(y)
                dens.append(weights)
            }
            trace.denominators.append(dens)
            trace.modifiedInputs.append(mods)
            trace.argmax.append(arg)
            trace.values[node.output] = y
        }
        trace.output = trace.values[plan.output]!
        trace.outputShape = plan.shapes[plan.output]
        return trace
    }

    private func modifiedInput(
        _ m: InputModifier, _ a: Buffer, _ s: Shape3, _ cache: inout [InputModifier: Buffer]
    ) throws -> Buffer {
        if m == .identity { return a }
        if let b = cache[m] { return b }
        let b = Buffer(count: s.count)
        let plane = s.height * s.width
        switch m {
        case .identity: break
        case .positive: kernels.clamp(count: s.count, a.const, positive: true, b.pointer)
        case .negative: kernels.clamp(count: s.count, a.const, positive: false, b.pointer)
        case .ones: b.pointer.initialize(repeating: 1, count: s.count)
        case .lowerBound, .upperBound:
            guard let bounds else { throw BiLRPError.invalidArgument("rule zb needs input bounds") }
            let v = m == .lowerBound ? bounds.lower : bounds.upper
            for c in 0..<s.channels { (b.pointer + c * plane).initialize(repeating: v[c], count: plane) }
        }
        cache[m] = b
        return b
    }

    // MARK: - Backward

    /// One block size for every layer the backward runs (from layer k up), from the largest of
    /// them and the memory budget, and at most 20 maps. Measured on VGG-16 (2 threads, the patch
    /// side through conv3_2, s per pair): at 224 x 224 blocks of 5 / 10 / 16 / 20 / 25 maps take
    /// 6.1 / 5.5 / 5.4 / 5.0 / 5.1 s (the sparse layers gain most: their micro-kernels' rows are
    /// the maps); at 128 x 128 8 / 16 / 20 / 25 / 34 / 50 maps take 2.0 / 1.69 / 1.67 / 1.72 / 1.8
    /// / 1.83 s (beyond 20 a block of the conv3-4 layers no longer stays in cache). Without the
    /// patch side (VGG-16 at 128 x 128), the budget's 16 maps were measured against letting the
    /// small top layers take all maps at once (5 % slower, 6 % more memory).
    static let maxBlock = 20

    func blockSize(for trace: Trace, outputs h: Int, from k: Int = 0) -> Int {
        if let blockSize { return min(blockSize, h) }
        let largest = max(trace.shapes[k...].map(\.count).max() ?? 1, trace.outputShape.count)
        let perMap = 4 * MemoryLayout<Float>.size * largest
        return max(1, min(h, Self.maxBlock, memoryBudget / max(perMap, 1)))
    }

    /// Whether a layer's backward takes the sparse path for this block: the fraction of non-zero
    /// relevance in its first map (at the layer output; a pooled map's values each land on one
    /// winner) against the backend's threshold. The zero pattern comes from the input's
    /// activations, so the maps of a block share it; the kernel itself checks every map. Against
    /// Winograd the threshold grows with the share of its 4 x 4 tiles that is padding (14 x 14
    /// maps: 16 x 16 of tiles, 1.31x the work; there VGG-16's conv5_1/5_2 at 23-24 % measured
    /// 0.73x and 0.59x Winograd's time sparse).
    func useSparse(_ R: UnsafePointer<Float>, _ pooled: (PoolGeometry, IndexBuffer)?, _ g: ConvGeometry,
                   winograd: Bool) -> Bool {
        let threshold = sparseThreshold(g, winograd: winograd)
        if threshold <= 0 { return false }
        if threshold > 1 { return true }
        let count = pooled?.0.outCount ?? g.outCount
        var nonZero = 0
        for i in 0..<count where R[i] != 0 { nonZero += 1 }
        return Double(nonZero) < threshold * Double(g.outCount)
    }

    /// The backend's density threshold for the sparse path, scaled by Winograd's tile padding.
    func sparseThreshold(_ g: ConvGeometry, winograd: Bool) -> Double {
        var threshold = kernels.sparseBelowDensity
        if threshold <= 0 || threshold > 1 { return threshold }
        if winograd {
            let tiled = Double((g.height + 3) / 4 * 4 * ((g.width + 3) / 4 * 4))
            threshold *= tiled / Double(g.height * g.width)
        }
        return threshold
    }

    /// The relevance of a block of maps at one value: full maps, or a max-pool's output maps with
    /// its winners, left pooled for a convolution below that unpools as it loads.
    enum BlockRelevance {
        case full(Buffer)
        case pooled(Buffer, PoolGeometry, IndexBuffer)
    }

    /// Whether the relevance at a max-pool's input may stay pooled: that value is a ReLU's output
    /// read by the pool alone, the ReLU reads a convolution's output that only it reads, and the
    /// convolution has a fused Winograd or a sparse backward (both unpool while they load).
    func poolsCarry(_ plan: ExecutionPlan, _ l: Int) -> Bool {
        let v = plan.nodes[l].inputs[0]
        guard let r = plan.writer[v], plan.readers[v] == 1, case .relu = plan.nodes[r].op else { return false }
        let u = plan.nodes[r].inputs[0]
        guard let c = plan.writer[u], plan.readers[u] == 1, case let .conv(below) = plan.nodes[c].op else { return false }
        return below.fusedBackward || below.sparseBackward
    }

    /// Propagates a block of n output relevance vectors down to the input of node `through` (0: the
    /// model input; a node of the leading chain): (n, C, H, W) of that input's shape. The nodes run
    /// in reverse order; relevance reaching a value from several readers is summed, and each
    /// value's relevance goes back to `pool` once the node that writes it has used it (the start
    /// buffer included).
    func backward(_ trace: Trace, _ start: Buffer, n: Int, through last: Int = 0, profile: ExplainerProfile? = nil,
                  pool: BufferPool = BufferPool(), cancellation: Cancellation? = nil) throws -> Buffer {
        let plan = trace.plan
        var rel = [BlockRelevance?](repeating: nil, count: plan.valueCount)
        rel[plan.output] = .full(start)
        func release(_ r: BlockRelevance) {
            switch r {
            case let .full(b), let .pooled(b, _, _): pool.give(b)
            }
        }
        func unpooled(_ r: BlockRelevance) -> Buffer {
            switch r {
            case let .full(b): return b
            case let .pooled(b, pg, am):
                let full = pool.take(n * pg.inCount)
                kernels.maxPoolBackward(n: n, b.const, pg, argmax: UnsafePointer(am.pointer), full.pointer)
                pool.give(b)
                return full
            }
        }
        /// Adds relevance to a value (the sum over its readers).
        func deposit(_ v: Int, _ r: BlockRelevance) {
            guard let have = rel[v] else { rel[v] = r; return }
            let a = unpooled(have), b = unpooled(r)
            kernels.lrpProduct(n: n, count: trace.valueShapes[v].count, nil, b.const, scale: 1, a.pointer,
                               accumulate: true)
            pool.give(b)
            rel[v] = .full(a)
        }
        /// A sum's split (residual Add, proportional Max / Min): input k gets a_k / stab(z) R, in one
        /// pass over R (`Kernels.lrpShares`). A share goes into the relevance its input already has
        /// (a residual block's skip, reached first from the block above) or, for one input, into R
        /// itself: a block of ResNet-50's 256 x 56 x 56 maps needs no buffer here beyond R.
        func depositShares(_ inputs: [Int], _ Rout: BlockRelevance, z: Buffer, epsilon: Float, count: Int) {
            let R = unpooled(Rout)
            var target: [Int: Buffer] = [:]  // per input value, where its shares go
            var outputs: [Buffer] = [], accumulate: [Bool] = []
            var usedR = false
            for v in inputs {
                if let b = target[v] {
                    outputs.append(b); accumulate.append(true)
                    continue
                }
                let b: Buffer, acc: Bool
                if let have = rel[v] {
                    rel[v] = nil
                    b = unpooled(have); acc = true
                } else if !usedR {
                    usedR = true
                    b = R; acc = false
                } else {
                    b = pool.take(n * count); acc = false
                }
                target[v] = b
                outputs.append(b); accumulate.append(acc)
            }
            kernels.lrpShares(n: n, count: count, R.const, z.const, epsilon: epsilon,
                              inputs: inputs.map { trace.values[$0]!.const }, outputs: outputs.map(\.pointer),
                              accumulate: accumulate)
            if !usedR { pool.give(R) }
            for (v, b) in target { rel[v] = .full(b) }
        }
        /// S = R / stab(z) for a block (z shared by its n maps); R goes back to the pool.
        func divided(_ Rout: BlockRelevance, by z: Buffer, count: Int, epsilon: Float) -> Buffer {
            let R = unpooled(Rout)
            let S = pool.take(n * count)
            kernels.lrpDivide(n: n, count: count, R.const, z.const, epsilon: epsilon, S.pointer)
            pool.give(R)
            return S
        }
        defer { for r in rel { if let r { release(r) } } }
        for l in stride(from: plan.nodes.count - 1, through: last, by: -1) {
            try cancellation?.check()
            let node = plan.nodes[l]
            guard let Rout = rel[node.output] else { continue }  // no relevance reaches this node
            rel[node.output] = nil
            let t0 = DispatchTime.now().uptimeNanoseconds
            defer { profile?.layers[l].seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9 }
            let s = trace.shapes[l]
            let a = trace.inputs[l]
            switch node.op {
            case let .conv(c):
                // Relevance already at the input (another reader's share, as a residual block's
                // skip): the convolution adds its own to it in place, one block buffer fewer.
                let v = node.inputs[0]
                var into: Buffer? = nil
                if case let .full(b) = rel[v] { into = b; rel[v] = nil }
                deposit(v, .full(try convBackward(c, trace, l, Rout, n: n, adding: into, pool: pool)))
            case .relu, .flatten, .scale:
                // ReLU and flatten pass relevance through; so does y = k x under LRP-0 (k x / (k x) = 1).
                deposit(node.inputs[0], Rout)
            case let .maxPool(p, _):
                let g = PoolGeometry(channels: s.channels, height: s.height, width: s.width, pool: p)
                let R = unpooled(Rout)
                if poolsCarry(plan, l) {
                    deposit(node.inputs[0], .pooled(R, g, trace.argmax[l]!))
                    continue
                }
                let Rin = pool.take(n * g.inCount)
                kernels.maxPoolBackward(n: n, R.const, g, argmax: UnsafePointer(trace.argmax[l]!.pointer), Rin.pointer)
                pool.give(R)
                deposit(node.inputs[0], .full(Rin))
            case let .avgPool(p, eps, _):
                let g = PoolGeometry(channels: s.channels, height: s.height, width: s.width, pool: p)
                let sBuf = divided(Rout, by: trace.denominators[l][0], count: g.outCount, epsilon: eps)
                let Rin = pool.take(n * g.inCount)
                kernels.avgPoolBackward(n: n, sBuf.const, g, Rin.pointer)
                pool.give(sBuf)
                kernels.lrpProduct(n: n, count: g.inCount, a.const, Rin.const, scale: 1, Rin.pointer, accumulate: false)
                deposit(node.inputs[0], .full(Rin))
            case let .adaptivePool(oh, ow, eps, sum):
                let g = PoolGeometry(channels: s.channels, height: s.height, width: s.width, adaptiveTo: oh, ow)
                let sBuf = divided(Rout, by: trace.denominators[l][0], count: g.outCount, epsilon: eps)
                let Rin = pool.take(n * g.inCount)
                kernels.adaptiveAvgPoolBackward(n: n, sBuf.const, g, Rin.pointer)
                pool.give(sBuf)
                let k: Float = sum ? Float(s.height * s.width) : 1
                kernels.lrpProduct(n: n, count: g.inCount, a.const, Rin.const, scale: k, Rin.pointer, accumulate: false)
                deposit(node.inputs[0], .full(Rin))
            case let .add(eps):
                // Each summand gets its share a_k / (sum_j a_j + eps sign) of the sum's relevance.
                depositShares(node.inputs, Rout, z: trace.denominators[l][0], epsilon: eps, count: s.count)
            case .concat:
                let R = unpooled(Rout)
                let total = trace.valueShapes[node.output].count
                var offset = 0
                for v in node.inputs {
                    let count = trace.valueShapes[v].count
                    let Rin = pool.take(n * count)
                    for m in 0..<n { (Rin.pointer + m * count).update(from: R.const + m * total + offset, count: count) }
                    deposit(v, .full(Rin))
                    offset += count
                }
                pool.give(R)
            case let .affine(_, _, eps):
                // LRP-epsilon on y = s x + t: R_in = s x / stab(y) R.
                let Rin = divided(Rout, by: trace.denominators[l][0], count: s.count, epsilon: eps)
                kernels.lrpProduct(n: n, count: s.count, trace.denominators[l][1].const, Rin.const, scale: 1, Rin.pointer,
                                   accumulate: false)
                deposit(node.inputs[0], .full(Rin))
            case let .pad(p):
                // Relevance at padded positions has no input: it stays out of the explanation.
                let R = unpooled(Rout)
                let Rin = pool.take(n * s.count)
                kernels.copyBox(n: n, R.const, trace.valueShapes[node.output], at: p.before, Rin.pointer, s, at: .zero,
                                box: s, accumulate: false)
                pool.give(R)
                deposit(node.inputs[0], .full(Rin))
            case let .slice(sl):
                let R = unpooled(Rout)
                let out = trace.valueShapes[node.output]
                let Rin = pool.take(n * s.count)
                Rin.pointer.initialize(repeating: 0, count: n * s.count)
                kernels.copyBox(n: n, R.const, out, at: .zero, Rin.pointer, s, at: sl.resolve(s)!.at, box: out,
                                accumulate: false)
                pool.give(R)
                deposit(node.inputs[0], .full(Rin))
            case let .extremum(_, proportional, eps):
                if proportional {
                    // a_k / stab(sum_j a_j) R, as a residual sum splits.
                    depositShares(node.inputs, Rout, z: trace.denominators[l][0], epsilon: eps, count: s.count)
                } else {
                    let R = unpooled(Rout)
                    for (j, v) in node.inputs.enumerated() {
                        let Rin = pool.take(n * s.count)
                        kernels.extremumBackward(n: n, count: s.count, R.const,
                                                 winner: UnsafePointer(trace.argmax[l]!.pointer), input: j, Rin.pointer)
                        deposit(v, .full(Rin))
                    }
                    pool.give(R)
                }
            case let .reduce(axes, mean, eps):
                let out = trace.valueShapes[node.output]
                let sBuf = divided(Rout, by: trace.denominators[l][0], count: out.count, epsilon: eps)
                let Rin = pool.take(n * s.count)
                kernels.reduceBackward(n: n, sBuf.const, a.const, s, axes: axes,
                                       scale: mean ? 1 / Float(axes.count(s)) : 1, Rin.pointer)
                pool.give(sBuf)
                deposit(node.inputs[0], .full(Rin))
            case let .layerNorm(ln, eps, exact):
                let sBuf = divided(Rout, by: trace.denominators[l][0], count: s.count, epsilon: eps)
                let Rin = pool.take(n * s.count)
                kernels.layerNormBackward(n: n, sBuf.const, a.const, s, gamma: ln.gamma,
                                          inverseSigma: trace.denominators[l][1].const, exact: exact, Rin.pointer)
                pool.give(sBuf)
                deposit(node.inputs[0], .full(Rin))
            case let .gelu(eps, exact):
                guard exact else { deposit(node.inputs[0], Rout); continue }
                let Rin = divided(Rout, by: trace.denominators[l][0], count: s.count, epsilon: eps)
                kernels.lrpProduct(n: n, count: s.count, trace.denominators[l][1].const, Rin.const, scale: 1, Rin.pointer,
                                   accumulate: false)
                deposit(node.inputs[0], .full(Rin))
            case let .attention(heads, eps, exact):
                // AH: queries and keys get none (their readers' relevance comes from other paths).
                let sBuf = divided(Rout, by: trace.denominators[l][0], count: s.count, epsilon: eps)
                let (q, k, v) = (trace.values[node.inputs[0]]!, trace.values[node.inputs[1]]!, trace.values[node.inputs[2]]!)
                let Rv = pool.take(n * s.count)
                kernels.attentionValueBackward(n: n, sBuf.const, v: v.const, s,
                                               heads: heads, weights: trace.denominators[l][1].const, Rv.pointer)
                if exact {
                    let Rq = pool.take(n * s.count), Rk = pool.take(n * s.count)
                    try kernels.attentionScoreBackward(n: n, sBuf.const, q: q.const, k: k.const, v: v.const, s, heads: heads,
                                                       weights: trace.denominators[l][1].const, Rq.pointer, Rk.pointer)
                    deposit(node.inputs[0], .full(Rq))
                    deposit(node.inputs[1], .full(Rk))
                }
                pool.give(sBuf)
                deposit(node.inputs[2], .full(Rv))
            }
        }
        let v = plan.nodes[last].inputs[0]
        guard let r = rel[v] else {
            // No path from the output reaches this value: its relevance is zero.
            let zero = pool.take(n * trace.valueShapes[v].count)
            zero.pointer.initialize(repeating: 0, count: zero.count)
            return zero
        }
        rel[v] = nil
        return unpooled(r)
    }

    /// One conv or linear node's backward for a block: the relevance at its input, added to `base`
    /// (which it returns) when given.
    private func convBackward(_ c: PreparedConv, _ trace: Trace, _ l: Int, _ Rout: BlockRelevance, n: Int,
                              adding base: Buffer? = nil, pool: BufferPool) throws -> Buffer {
        let s = trace.shapes[l], a = trace.inputs[l]
        let g = c.geometry(s)
        var R: Buffer
        var pooled: (PoolGeometry, IndexBuffer)? = nil
        switch Rout {
        case let .full(b): R = b
        case let .pooled(b, pg, am): R = b; pooled = (pg, am)
        }
        defer { pool.give(R) }
        let sparse = c.sparseBackward && useSparse(R.const, pooled, g, winograd: c.fusedBackward)
        if let (pg, am) = pooled, !sparse, !c.fusedBackward {
            // Left pooled for a sparse path the density then did not pick: unpool here.
            let full = pool.take(n * pg.inCount)
            kernels.maxPoolBackward(n: n, R.const, pg, argmax: UnsafePointer(am.pointer), full.pointer)
            pool.give(R)
            R = full
            pooled = nil
        }
        let Rin = base ?? pool.take(n * g.inCount)
        var first = base == nil
        for (p, pass) in c.passes.enumerated() {
            let z = trace.denominators[l][p].const
            let inputs: [UnsafePointer<Float>?] = pass.terms.map { term in
                term.input == .ones ? nil
                    : term.input == .identity ? a.const : trace.modifiedInputs[l][term.input]!.const
            }
            if sparse {
                // Gathered over the non-zero relevance (and the pool above unpooled on packing).
                let p = pooled.map { (argmax: UnsafePointer($0.1.pointer), pool: $0.0) }
                for (term, input) in zip(pass.terms, inputs) {
                    try kernels.lrpTermSparse(n: n, R.const, pooled: p, z, epsilon: pass.epsilon, g,
                                          prepared: c.sparseWeights(term.weight, kernels).const, input, scale: pass.scale,
                                          Rin.pointer, accumulate: !first)
                    first = false
                }
            } else if c.fusedBackward {
                // Divide, Winograd backward and product in one pass over the block, per term
                // (and the max-pool above unpooled on loading, when it was left pooled).
                for (term, input) in zip(pass.terms, inputs) {
                    let u = c.backward[term.weight]!.const
                    if let (pg, am) = pooled {
                        try kernels.lrpTermUnpooling(n: n, R.const, argmax: UnsafePointer(am.pointer), pg, z,
                                                 epsilon: pass.epsilon, g, prepared: u, input,
                                                 scale: pass.scale, Rin.pointer, accumulate: !first)
                    } else {
                        try kernels.lrpTerm(n: n, R.const, z, epsilon: pass.epsilon, g, prepared: u, input,
                                        scale: pass.scale, Rin.pointer, accumulate: !first)
                    }
                    first = false
                }
            } else {
                try kernels.lrpDirect(n: n, R.const, z, epsilon: pass.epsilon, g,
                                  weights: pass.terms.map { c.weights[$0.weight]!.const }, inputs: inputs,
                                  scale: pass.scale, Rin.pointer, accumulate: !first)
                first = false
            }
        }
        return Rin
    }
}

/// The nodes one input runs through (the model's, then the head's), with the values' writers and
/// reader counts.
struct ExecutionPlan {
    let nodes: [PreparedNode]
    /// Per value, its shape for this input.
    let shapes: [Shape3]
    let output: Int
    var valueCount: Int { shapes.count }
    /// Per value: the node that writes it (nil for the input), and how many node inputs read it.
    let writer: [Int?]
    let readers: [Int]
    /// How many nodes from the first form a chain: each reads the value the one before it wrote,
    /// and that value has no other reader (the patch side runs on these).
    let chainPrefix: Int

    init(nodes: [PreparedNode], shapes: [Shape3], output: Int) {
        self.nodes = nodes; self.shapes = shapes; self.output = output
        let valueCount = shapes.count
        var writer = [Int?](repeating: nil, count: valueCount), readers = [Int](repeating: 0, count: valueCount)
        for (i, n) in nodes.enumerated() {
            writer[n.output] = i
            for v in n.inputs { readers[v] += 1 }
        }
        self.writer = writer; self.readers = readers
        var k = 0, prev = 0
        while k < nodes.count, nodes[k].inputs == [prev], readers[prev] == 1 {
            prev = nodes[k].output
            k += 1
        }
        chainPrefix = k
    }
}

/// Seconds spent per step of a factor computation (see `Explainer.profiledFactors`).
public final class ExplainerProfile: @unchecked Sendable {
    public var forwardSeconds: Double = 0
    /// Layers run on the patch side (0: all by the backward).
    public var patchSideLayers = 0
    /// Whether the patch side met the maps as packed cells (16 patches a vector; see
    /// `Kernels.cellsContract(packed:)`) rather than cell by cell.
    public var packedCells = false
    /// Per layer of the model and head, in order: a label with its input shape, and backward seconds.
    public var layers: [(name: String, seconds: Double)] = []
}

final class HeadCache: @unchecked Sendable {
    private var entries: [Shape3: [PreparedLayer]] = [:]
    private let lock = NSLock()
    func get(_ s: Shape3) -> [PreparedLayer]? { lock.lock(); defer { lock.unlock() }; return entries[s] }
    func set(_ s: Shape3, _ l: [PreparedLayer]) { lock.lock(); entries[s] = l; lock.unlock() }
    var all: [PreparedLayer] { lock.lock(); defer { lock.unlock() }; return entries.values.flatMap { $0 } }
}

extension Explainer {
    /// Bytes of weights this explainer holds in prepared forms (modified, packed, Winograd,
    /// sparse), with the heads drawn so far (one per input shape: h x D floats each). What a
    /// server that keeps several explainers counts against its memory bound.
    public var preparedBytes: Int {
        (nodes.map(\.op) + headCache.all).reduce(0) { sum, l in
            if case let .conv(c) = l { return sum + c.preparedBytes }
            return sum
        }
    }
}

import Foundation
