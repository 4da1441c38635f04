/// The historical-tables similarity model (the paper's second system; BILRP section 10), as
/// scripts/train-tables.py trains it, with the parameter names of its PyTorch module:
///
/// - the digit detector on a page's ink (one channel, 1 - grey): bias-free convolutions
///   `detector.features.0` (5 x 5), `.3`, `.5` (3 x 3), `.7`, `.9` (3 x 3, dilation 2) with ReLUs and
///   a 2 x 2 max-pool after the first, then `detector.head` (1 x 1 to 10 maps; its bias is minus the
///   per-digit threshold) and `H` (the clip at zero): H_0 .. H_9 at stride 2;
/// - the bigram layer: `first` and `second` gather H_d1 and H_d2 into channel d1 * 10 + d2 (fixed
///   1 x 1 convolutions of zeros and ones), `shift{s}` moves the second left by s cells (a slice and
///   a zero pad: value at p is H_d2(p + (s, 0))), `min{s}` the element-wise minimum, `bigrams` the
///   maximum over the shifts;
/// - `phi`: the sum over the page, the 100-bin bigram histogram (100, 1, 1).
///
/// Relevance goes through the minimum and maximum to the winner, through the shifts and the
/// gathers unchanged (each output is one input), and through the detector by the rules asked for.
public enum TablesModel {
    /// Horizontal shifts of the bigram layer, in cells of 2 pixels: adjacent digits' centres are
    /// 7-12 px apart at 14-24 px type.
    public static let shifts = [3, 4, 5, 6]

    /// The smallest page side in pixels: the detector pools by 2 and the widest shift needs 7 cells.
    public static let minimumPageSide = 16

    /// The detector's convolutions: name, dilation, whether a 2 x 2 max-pool follows its ReLU.
    static let convolutions: [(name: String, dilation: Int, pool: Bool)] = [
        ("detector.features.0", 1, true), ("detector.features.3", 1, false), ("detector.features.5", 1, false),
        ("detector.features.7", 2, false), ("detector.features.9", 2, false),
    ]

    /// The whole model, weights from `source` (channels as the tensors say), cut after `cut` (a node
    /// name; nil: `phi`).
    public static func graph(weights source: any TensorSource, cut: String? = nil) throws -> Graph {
        var nodes: [Graph.Node] = []
        func add(_ name: String, _ op: Graph.Op, _ inputs: [String]) { nodes.append(Graph.Node(name: name, op: op, inputs: inputs, output: name)) }
        func conv(_ name: String, bias: Bool, dilation: Int, from: String) throws -> Int {
            guard let t = try source.tensor(named: name + ".weight") else { throw BiLRPError.missingTensor(name + ".weight") }
            guard t.shape.count == 4, t.shape[2] == t.shape[3], t.shape[2] % 2 == 1 else {
                throw BiLRPError.shapeMismatch(what: name + ".weight", expected: "(out, in, k, k) with k odd",
                                               found: "\(t.shape)")
            }
            let (out, k) = (t.shape[0], t.shape[2])
            let b = bias ? try source.required(name + ".bias", shape: [out]) : nil
            add(name, .layer(.conv2d(try Conv2d(weight: t.data, bias: b, outChannels: out, inChannels: t.shape[1],
                                                kernel: (k, k), padding: (dilation * (k / 2), dilation * (k / 2)),
                                                dilation: (dilation, dilation)))), [from])
            return out
        }
        var last = "x"
        for c in convolutions {
            _ = try conv(c.name, bias: false, dilation: c.dilation, from: last)
            // torch's Sequential numbering: the ReLU after convolution i is i + 1, a pool i + 2.
            let index = Int(c.name.split(separator: ".").last!)!
            let relu = "detector.features.\(index + 1)"
            add(relu, .layer(.relu), [c.name])
            last = relu
            if c.pool {
                let pool = "detector.features.\(index + 2)"
                add(pool, .layer(.maxPool2d(Pool2d(kernel: (2, 2)))), [last])
                last = pool
            }
        }
        let digits = try conv("detector.head", bias: true, dilation: 1, from: last)
        guard digits == 10 else {
            throw BiLRPError.shapeMismatch(what: "detector.head.weight", expected: "10 output maps (one per digit)",
                                           found: "\(digits)")
        }
        add("H", .layer(.relu), ["detector.head"])
        let g = try Graph(input: "x", nodes: nodes + bigramNodes(from: "H"), output: "phi")
        guard let cut, cut != "phi" else { return g }
        return try g.cut(.name(cut))
    }

    /// The bigram layer and the sum pooling, reading the digit maps from `input` (10 channels):
    /// nodes `first`, `second`, `shift{s}.slice`, `shift{s}`, `min{s}`, `bigrams`, `phi`.
    public static func bigramNodes(from input: String) throws -> [Graph.Node] {
        var nodes: [Graph.Node] = []
        func add(_ name: String, _ op: Graph.Op, _ inputs: [String]) { nodes.append(Graph.Node(name: name, op: op, inputs: inputs, output: name)) }
        for (name, first) in [("first", true), ("second", false)] {
            var w = [Float](repeating: 0, count: 100 * 10)
            for c in 0..<100 { w[c * 10 + (first ? c / 10 : c % 10)] = 1 }
            add(name, .layer(.conv2d(try Conv2d(weight: w, bias: nil, outChannels: 100, inChannels: 10, kernel: (1, 1)))), [input])
        }
        for s in shifts {
            add("shift\(s).slice", .slice(Slice3(start: Position3(0, 0, s))), ["second"])
            add("shift\(s)", .pad(try Padding3(before: .zero, after: Position3(0, 0, s))), ["shift\(s).slice"])
            add("min\(s)", .minimum, ["first", "shift\(s)"])
        }
        add("bigrams", .maximum, shifts.map { "min\($0)" })
        add("phi", .reduce(.spatial, mean: false), ["bigrams"])
        return nodes
    }
}
