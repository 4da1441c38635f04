/// A model as a graph: nodes that read named values and write one named value each. The chain of
/// layers (`SequentialModel`) is the special case where every node reads the value the node before
/// it wrote; ResNets add residual sums, ONNX files any DAG of the supported ops.
///
/// Values are activations of one input, batch 1: (C, H, W) maps, or (D, 1, 1) feature vectors after
/// a flatten. Nodes may be given in any order; the initializer checks the graph (every value written
/// once, every input defined, no cycle) and keeps the nodes in a topological order, the order the
/// forward runs them (the backward runs them in reverse).
public struct Graph: Sendable, Equatable {
    public enum Op: Sendable, Equatable {
        /// A one-input layer: convolution, linear, ReLU, pooling, flatten, batch norm, dropout, identity.
        case layer(Layer)
        /// The element-wise sum of two or more activations of one shape (a residual connection).
        case add
        /// The concatenation of activations along the channels (equal H and W).
        case concat
        /// Multiplication by a constant scalar.
        case scale(Float)
        /// Constant padding (ONNX Pad, mode constant).
        case pad(Padding3)
        /// A box of the input, step 1 (ONNX Slice).
        case slice(Slice3)
        /// The element-wise maximum / minimum of two or more activations of one shape. Relevance
        /// goes to the input that won (like max-pool), or, under the `proportional` rule, is split
        /// in proportion to the inputs.
        case maximum
        case minimum
        /// The sum (or mean) over some axes, kept with extent 1 (ONNX ReduceSum / ReduceMean).
        case reduce(Axes3, mean: Bool)
        /// Layer normalization over the channels (a sequence's features) at every position; LN rule.
        case layerNorm(LayerNorm)
        /// GELU (erf form); identity rule.
        case gelu
        /// Multi-head scaled dot-product attention of (query, key, value), three sequences (D, 1, T)
        /// with D = heads x head size; AH rule (relevance to the values only). See `TransformerOps`.
        case attention(heads: Int)

        public var name: String {
            switch self {
            case let .layer(l): return l.name
            case .add: return "Add"
            case .concat: return "Concat"
            case let .scale(k): return "Mul(\(k))"
            case let .pad(p):
                return "Pad(\(p.before) before, \(p.after) after\(p.value == 0 ? "" : ", value \(p.value)"))"
            case let .slice(sl): return "Slice\(sl.description)"
            case .maximum: return "Max"
            case .minimum: return "Min"
            case let .reduce(axes, mean): return "\(mean ? "ReduceMean" : "ReduceSum")(\(axes))"
            case .layerNorm: return "LayerNorm"
            case .gelu: return "Gelu"
            case let .attention(heads): return "Attention(\(heads) heads)"
            }
        }

        /// Convolutions and linear layers: the ops that take a rule.
        public var isWeighted: Bool {
            switch self {
            case .layer(.conv2d), .layer(.linear): return true
            default: return false
            }
        }

        var arity: ClosedRange<Int> {
            switch self {
            case .layer, .scale, .pad, .slice, .reduce, .layerNorm, .gelu: return 1...1
            case .attention: return 3...3
            case .add, .maximum, .minimum: return 2...Int.max
            case .concat: return 1...Int.max
            }
        }
    }

    public struct Node: Sendable, Equatable {
        /// Unique among the nodes; what `--layer`, composites and errors use.
        public var name: String
        public var op: Op
        public var inputs: [String]
        public var output: String
        /// The index of a chain's layer (VGG's `features` numbering): composites by index ranges
        /// refer to it. nil for nodes of a general graph.
        public var index: Int?

        public init(name: String, op: Op, inputs: [String], output: String, index: Int? = nil) {
            self.name = name; self.op = op; self.inputs = inputs; self.output = output; self.index = index
        }
    }

    /// The model input's value name.
    public let input: String
    /// The value the model computes (its features).
    public let output: String
    /// In topological order.
    public let nodes: [Node]

    /// Checks and orders the nodes. Errors name the node: a value written twice, an input that no
    /// node writes, a cycle, an op with the wrong number of inputs, an output no node writes.
    public init(input: String, nodes: [Node], output: String) throws {
        var writer: [String: Int] = [:]
        var names = Set<String>()
        for (i, n) in nodes.enumerated() {
            guard names.insert(n.name).inserted else {
                throw BiLRPError.invalidGraph("two nodes are named '\(n.name)'")
            }
            guard n.op.arity.contains(n.inputs.count) else {
                throw BiLRPError.invalidGraph("node '\(n.name)' (\(n.op.name)) has \(n.inputs.count) inputs")
            }
            guard n.output != input, writer[n.output] == nil else {
                throw BiLRPError.invalidGraph("value '\(n.output)' of node '\(n.name)' is written twice")
            }
            writer[n.output] = i
        }
        for n in nodes {
            for v in n.inputs where v != input && writer[v] == nil {
                throw BiLRPError.invalidGraph("node '\(n.name)' reads '\(v)', which no node writes and which is not the input")
            }
        }
        guard output == input || writer[output] != nil else {
            throw BiLRPError.invalidGraph("the output '\(output)' is written by no node")
        }
        // Kahn's algorithm, stable: among ready nodes the one given first runs first.
        var pending = nodes.map { n in Set(n.inputs.filter { $0 != input }).count }
        var readers: [String: [Int]] = [:]
        for (i, n) in nodes.enumerated() { for v in Set(n.inputs) { readers[v, default: []].append(i) } }
        var ready = (0..<nodes.count).filter { pending[$0] == 0 }
        var order: [Int] = []
        var head = 0
        while head < ready.count {
            ready[head...].sort()
            let i = ready[head]
            head += 1
            order.append(i)
            for j in readers[nodes[i].output] ?? [] {
                pending[j] -= 1
                if pending[j] == 0 { ready.append(j) }
            }
        }
        if order.count < nodes.count {
            let stuck = (0..<nodes.count).first { !order.contains($0) }!
            throw BiLRPError.invalidGraph("node '\(nodes[stuck].name)' is on a cycle (or reads a value of one)")
        }
        self.input = input
        self.output = output
        self.nodes = order.map { nodes[$0] }
    }

    /// A chain of layers as a graph: node `i` is layer `i` (named by its index, as `--layer` and
    /// composites count), reading value `i` and writing value `i + 1`; value `0` is the input.
    public init(chain model: SequentialModel) {
        let nodes = model.layers.enumerated().map { i, l in
            Node(name: "\(i)", op: .layer(l), inputs: ["\(i)"], output: "\(i + 1)", index: i)
        }
        // swiftlint:disable:next force_try
        try! self.init(input: "0", nodes: nodes, output: "\(model.layers.count)")
    }

    /// True when every node reads the value the node before it wrote.
    public var isChain: Bool {
        var prev = input
        for n in nodes {
            guard n.inputs == [prev] else { return false }
            prev = n.output
        }
        return true
    }

    public var parameterCount: Int {
        nodes.reduce(0) { sum, n in
            if case let .layer(l) = n.op { return sum + l.parameterCount }
            return sum
        }
    }

    /// The node that writes a value.
    public func writer(of value: String) -> Node? { nodes.first { $0.output == value } }

    /// The graph up to a node (by node name) or value: its ancestors only, that value the output.
    public func cut(at name: String) throws -> Graph {
        guard let value = nodes.first(where: { $0.name == name })?.output
                ?? (name == input || writer(of: name) != nil ? name : nil) else {
            throw BiLRPError.invalidArgument("no node or value is named '\(name)'")
        }
        var needed: Set<String> = [value]
        var keep: [Node] = []
        for n in nodes.reversed() where needed.contains(n.output) {
            keep.append(n)
            needed.formUnion(n.inputs)
        }
        return try Graph(input: input, nodes: keep.reversed(), output: value)
    }

    /// The shape of every value for an input shape; errors name the node that does not fit.
    public func shapes(for inputShape: Shape3) throws -> [String: Shape3] {
        var shapes = [input: inputShape]
        for n in nodes {
            let ins = n.inputs.map { shapes[$0]! }
            shapes[n.output] = try Graph.outputShape(n, ins)
        }
        return shapes
    }

    static func outputShape(_ n: Node, _ ins: [Shape3]) throws -> Shape3 {
        switch n.op {
        case let .layer(l):
            // A chain's nodes are named by their index: those read as the layers they are.
            return try l.outputShape(ins[0], label: n.name == n.index.map(String.init) ? "layer \(n.name)" : "node '\(n.name)'")
        case .scale:
            return ins[0]
        case .add, .maximum, .minimum:
            for (k, s) in ins.enumerated() where s != ins[0] {
                throw BiLRPError.shapeMismatch(
                    what: "input \(k) of node '\(n.name)' (\(n.op.name))", expected: "\(ins[0]) like input 0", found: "\(s)")
            }
            return ins[0]
        case let .pad(p):
            return p.outputShape(ins[0])
        case let .slice(sl):
            guard let (_, box) = sl.resolve(ins[0]) else {
                throw BiLRPError.shapeMismatch(
                    what: "node '\(n.name)' (\(n.op.name))", expected: "a non-empty slice", found: "input \(ins[0])")
            }
            return box
        case let .reduce(axes, _):
            return axes.reduce(ins[0])
        case .gelu:
            return ins[0]
        case let .layerNorm(ln):
            guard ins[0].channels == ln.features else {
                throw BiLRPError.shapeMismatch(
                    what: "input of node '\(n.name)' (LayerNorm)", expected: "\(ln.features) features", found: "\(ins[0])")
            }
            return ins[0]
        case let .attention(heads):
            for (k, s) in ins.enumerated() where s != ins[0] {
                throw BiLRPError.shapeMismatch(
                    what: "input \(k) of node '\(n.name)' (Attention)", expected: "\(ins[0]) like the query", found: "\(s)")
            }
            guard ins[0].height == 1, heads > 0, ins[0].channels % heads == 0 else {
                throw BiLRPError.shapeMismatch(
                    what: "input of node '\(n.name)' (Attention)",
                    expected: "a sequence (D, 1, T) with D divisible by \(heads) heads", found: "\(ins[0])")
            }
            return ins[0]
        case .concat:
            for (k, s) in ins.enumerated() where s.height != ins[0].height || s.width != ins[0].width {
                throw BiLRPError.shapeMismatch(
                    what: "input \(k) of node '\(n.name)' (Concat)",
                    expected: "\(ins[0].height) x \(ins[0].width) like input 0", found: "\(s.height) x \(s.width)")
            }
            return Shape3(ins.reduce(0) { $0 + $1.channels }, ins[0].height, ins[0].width)
        }
    }
}

extension Graph {
    /// The graph prepared for explanation: every BatchNorm folded into the convolution that writes
    /// its input (when that convolution's output is read by the BatchNorm alone), dropout and
    /// identity nodes removed (their readers read their input). Node names and indices are kept.
    public func canonized() throws -> Graph {
        var readers: [String: Int] = [:]
        for n in nodes { for v in n.inputs { readers[v, default: 0] += 1 } }
        var out: [Node] = []
        var alias: [String: String] = [:]
        func resolve(_ v: String) -> String { alias[v] ?? v }
        for var n in nodes {
            n.inputs = n.inputs.map(resolve)
            switch n.op {
            case .layer(.dropout), .layer(.identity):
                alias[n.output] = n.inputs[0]
                continue
            case let .layer(.batchNorm2d(bn)):
                if let j = out.lastIndex(where: { $0.output == n.inputs[0] }), case var .layer(.conv2d(conv)) = out[j].op,
                   readers[n.inputs[0]] == 1, n.inputs[0] != output {
                    try conv.fold(bn, at: n.name)
                    out[j].op = .layer(.conv2d(conv))
                    alias[n.output] = out[j].output
                    continue
                }
                out.append(n)  // a standalone affine map (see `PreparedLayer.affine`)
            default:
                out.append(n)
            }
        }
        return try Graph(input: input, nodes: out, output: resolve(output))
    }
}

extension Conv2d {
    /// Folds an inference-mode batch norm of the output into the weights and bias:
    /// w' = w g / sqrt(v + e), b' = (b - m) g / sqrt(v + e) + beta.
    mutating func fold(_ bn: BatchNorm2d, at name: String) throws {
        guard bn.weight.count == outChannels else {
            throw BiLRPError.shapeMismatch(
                what: "BatchNorm2d at \(name)", expected: "\(outChannels) channels", found: "\(bn.weight.count)")
        }
        let per = weight.count / outChannels
        var b = bias ?? [Float](repeating: 0, count: outChannels)
        for k in 0..<outChannels {
            let scale = bn.weight[k] / (bn.runningVar[k] + bn.eps).squareRoot()
            for j in 0..<per { weight[k * per + j] *= scale }
            b[k] = (b[k] - bn.runningMean[k]) * scale + bn.bias[k]
        }
        bias = b
    }
}

extension BatchNorm2d {
    /// The per-channel affine map y = s x + t it computes at inference.
    var affine: (scale: [Float], shift: [Float]) {
        let s = (0..<weight.count).map { weight[$0] / (runningVar[$0] + eps).squareRoot() }
        return (s, (0..<weight.count).map { bias[$0] - runningMean[$0] * s[$0] })
    }
}

/// Where a model is cut: after a chain's first N layers (`features[:N]`), or at a named node,
/// value or stage. As text (`--layer`, JSON `"layer"`): an integer is an index, anything else a name.
public enum LayerCut: Sendable, Hashable, Codable, CustomStringConvertible, ExpressibleByIntegerLiteral,
    ExpressibleByStringLiteral {
    case index(Int)
    case name(String)

    public init(integerLiteral value: Int) { self = .index(value) }
    public init(stringLiteral value: String) { self = .name(value) }

    public init(parsing text: String) {
        let t = text.trimmingCharacters(in: .whitespaces)
        self = Int(t).map(LayerCut.index) ?? .name(t)
    }

    public var description: String {
        switch self {
        case let .index(i): return "\(i)"
        case let .name(n): return n
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let i = try? c.decode(Int.self) { self = .index(i); return }
        self = .name(try c.decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case let .index(i): try c.encode(i)
        case let .name(n): try c.encode(n)
        }
    }
}

extension Graph {
    /// The graph cut at a chain index or a node name. An index needs a chain (every node has one).
    public func cut(_ c: LayerCut) throws -> Graph {
        switch c {
        case let .name(n):
            return try cut(at: n)
        case let .index(l):
            guard nodes.allSatisfy({ $0.index != nil }) else {
                throw BiLRPError.invalidArgument(
                    "this model is a graph, not a chain of layers: cut it at a node or stage name, not at index \(l) (`bilrp inspect` lists the names)")
            }
            let count = (nodes.map { $0.index! }.max() ?? -1) + 1
            guard l >= 1, l <= count else { throw BiLRPError.invalidLayerIndex(l, count: count) }
            return try cut(at: nodes.last { $0.index! < l }!.name)
        }
    }

    /// How many layers an index cut may keep (the last chain index + 1); 0 for a graph.
    public var chainLength: Int {
        guard isChain, nodes.allSatisfy({ $0.index != nil }) else { return 0 }
        return (nodes.last?.index ?? -1) + 1
    }

    /// The input channels the model expects: those of the first convolution reading the input.
    public var inputChannels: Int? {
        for n in nodes where n.inputs.contains(input) {
            if case let .layer(.conv2d(c)) = n.op { return c.inChannels }
        }
        return nil
    }
}
