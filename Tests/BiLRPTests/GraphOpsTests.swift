import BiLRP
import BiLRPIO
import BiLRPReference
import CKernels
import Foundation
import Testing

/// A bias-free (or biased) graph with the ops that move, select and reduce: Max of two maps, Min of a
/// map and another shifted by two columns (Slice then Pad: the tables model's bigram), Concat, Mul,
/// ReduceSum and ReduceMean over channels, a max-pool, ReduceMean over rows; c2 is dilated and grouped.
func opsGraph(seed: UInt64, bias: Bool) throws -> Graph {
    func conv(_ name: String, _ from: String, _ cin: Int, _ cout: Int, _ s: UInt64, dilation: Int = 1, groups: Int = 1)
        throws -> Graph.Node {
        let fan = cin / groups * 9
        return Graph.Node(name: name, op: .layer(.conv2d(try Conv2d(
            weight: random(cout * fan, seed: seed &+ s, scale: (2 / Float(fan)).squareRoot()),
            bias: bias ? random(cout, seed: seed &+ s &+ 1000, scale: 0.1) : nil, outChannels: cout, inChannels: cin,
            kernel: (3, 3), stride: (1, 1), padding: (dilation, dilation), dilation: (dilation, dilation),
            groups: groups))), inputs: [from], output: name)
    }
    func node(_ name: String, _ op: Graph.Op, _ inputs: [String]) -> Graph.Node {
        Graph.Node(name: name, op: op, inputs: inputs, output: name)
    }
    return try Graph(input: "x", nodes: [
        try conv("c1", "x", 3, 6, 1), node("a", .layer(.relu), ["c1"]),
        try conv("c2", "a", 6, 6, 2, dilation: 2, groups: 3), node("b", .layer(.relu), ["c2"]),
        node("max", .maximum, ["a", "b"]),
        node("slice", .slice(Slice3(start: Position3(0, 0, 2))), ["a"]),
        node("pad", .pad(try Padding3(before: .zero, after: Position3(0, 0, 2))), ["slice"]),
        node("min", .minimum, ["b", "pad", "a"]),
        node("cat", .concat, ["max", "min"]), node("half", .scale(0.5), ["cat"]),
        try conv("c3", "half", 12, 5, 3), node("g", .layer(.relu), ["c3"]),
        node("sum", .reduce(.channels, mean: false), ["g"]),
        node("meanc", .reduce(.channels, mean: true), ["max"]),
        node("cat2", .concat, ["sum", "meanc", "sum"]),
        node("pool", .layer(.maxPool2d(Pool2d(kernel: (2, 2)))), ["cat2"]),
        node("rows", .reduce(.height, mean: true), ["pool"]),
    ].reversed(), output: "rows")  // given in reverse: the graph sorts its nodes
}

@Suite("Graph ops: Pad, Slice, Max / Min, ReduceSum / ReduceMean, dilated and grouped convolutions", .serialized)
struct GraphOpsTests {
    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "" } catch { return "\(error)" }
    }

    @Test("box copy (Pad and Slice, both ways) equals the reference, with and without accumulation", arguments: isaPaths)
    func copyBox(isa: Int32) {
        withISA(isa) {
            let ss = Shape3(5, 7, 9), ds = Shape3(4, 6, 8), box = Shape3(3, 4, 5), n = 2
            let src = random(n * ss.count, seed: 1), dst0 = random(n * ds.count, seed: 2)
            for accumulate in [false, true] {
                let (fast, ref) = both(n * ds.count) { k, out in
                    out.update(from: dst0, count: dst0.count)
                    k.copyBox(n: n, src, ss, at: Position3(1, 2, 3), out, ds, at: Position3(0, 1, 2), box: box,
                              accumulate: accumulate)
                }
                #expect(fast == ref, "copy box, accumulate \(accumulate)")
                // Outside the box, dst is untouched.
                #expect(fast[0] == dst0[0] && fast[ds.count - 1] == dst0[ds.count - 1])
                // One element by hand: map 1, box position (2, 3, 4).
                let s = src[ss.count + (3 * 7 + 5) * 9 + 7], d = (2 * 6 + 4) * 8 + 6
                #expect(fast[ds.count + d] == (accumulate ? dst0[ds.count + d] + s : s))
            }
        }
    }

    /// A sum's split in one pass: three summands, one output R itself (in place), one summand read
    /// twice into the same accumulating output (Add(x, x)), one accumulating into relevance already
    /// there; more than two chunks of 2^14 per map. Against the reference, then one element by hand.
    @Test("residual split (lrpShares) in place and accumulating equals the reference", arguments: isaPaths)
    func shares(isa: Int32) {
        withISA(isa) {
            let len = 40_000, n = 3
            var z = random(len, seed: 30)
            z[5] = 0
            let a = (0..<2).map { random(len, seed: 31 + UInt64($0)) }
            let R0 = random(n * len, seed: 33), have0 = random(n * len, seed: 34)
            var results: [([Float], [Float])] = []
            for kernels in [CKernelsBackend() as any Kernels, ReferenceKernels()] {
                var R = R0, have = have0
                R.withUnsafeMutableBufferPointer { r in have.withUnsafeMutableBufferPointer { h in
                    a[0].withUnsafeBufferPointer { a0 in a[1].withUnsafeBufferPointer { a1 in
                        // Summands a0, a1, a1: a0's share into `have` (accumulating), a1's twice into R.
                        kernels.lrpShares(n: n, count: len, r.baseAddress!, z, epsilon: 0.01,
                                          inputs: [a0.baseAddress!, a1.baseAddress!, a1.baseAddress!],
                                          outputs: [h.baseAddress!, r.baseAddress!, r.baseAddress!],
                                          accumulate: [true, false, true])
                    } }
                } }
                results.append((R, have))
            }
            expectClose(results[0].0, results[1].0, tol: 1e-6, "shares into R")
            expectClose(results[0].1, results[1].1, tol: 1e-6, "shares accumulated")
            let m = 2, i = 5  // z = 0: stab(z) = +0.01
            let s = R0[m * len + i] / 0.01
            #expect(abs(results[0].1[m * len + i] - (have0[m * len + i] + a[0][i] * s)) <= 1e-3 * abs(s))
            #expect(abs(results[0].0[m * len + i] - 2 * a[1][i] * s) <= 1e-3 * abs(s))
        }
    }

    @Test("element-wise max / min: values and winners (first wins ties, NaN wins), winner-take-all backward",
          arguments: isaPaths)
    func extremum(isa: Int32) {
        withISA(isa) {
            let len = 40_000, k = 3, n = 2  // more than two chunks of 2^14
            // Values on a coarse grid, so ties are frequent; a few NaNs.
            var xs = (0..<k).map { j in random(len, seed: 10 + UInt64(j)).map { ($0 * 2).rounded() } }
            xs[1][7] = .nan
            xs[2][len - 1] = .nan
            let R = random(n * len, seed: 20)
            for maximum in [true, false] {
                var outs: [([Float], [Int32])] = []
                for kernels in [CKernelsBackend() as any Kernels, ReferenceKernels()] {
                    var y = [Float](repeating: 0, count: len), w = [Int32](repeating: -1, count: len)
                    withPointers(xs) { ps in
                        kernels.extremumForward(ps, count: len, maximum: maximum, &y, winner: &w)
                    }
                    outs.append((y, w))
                }
                let (y, w) = outs[0]
                #expect(w == outs[1].1, "winners, maximum \(maximum)")
                #expect(zip(y, outs[1].0).allSatisfy { $0 == $1 || ($0.isNaN && $1.isNaN) })
                #expect(w[7] == 1 && y[7].isNaN && w[len - 1] == 2)
                // Ties go to the first input that gives the extremum.
                let ties = (0..<len).filter { i in !y[i].isNaN && xs[0][i] == xs[1][i] && xs[0][i] == y[i] }
                #expect(!ties.isEmpty && ties.allSatisfy { w[$0] == 0 })
                for j in 0..<k {
                    let (fast, ref) = both(n * len) { kern, out in
                        kern.extremumBackward(n: n, count: len, R, winner: w, input: j, out)
                    }
                    #expect(fast == ref, "backward to input \(j)")
                    #expect((0..<len).allSatisfy { i in fast[len + i] == (w[i] == j ? R[len + i] : 0) })
                }
            }
        }
    }

    @Test("sum / mean over every subset of C, H, W: forward and relevance equal the reference", arguments: isaPaths)
    func reduce(isa: Int32) {
        withISA(isa) {
            let s = Shape3(5, 6, 7), n = 3
            let x = random(s.count, seed: 30).map { abs($0) + 0.1 }
            for raw in 0...7 {
                let axes = Axes3(rawValue: raw), r = axes.reduce(s)
                let scale: Float = raw == 3 ? 1 / Float(s.channels * s.height) : 1
                let (fy, ry) = both(r.count) { k, y in k.reduceForward(x, s, axes: axes, scale: scale, y) }
                expectClose(fy, ry, tol: 1e-6, "forward over \(axes)")
                let S = random(n * r.count, seed: 31)
                let (fr, rr) = both(n * s.count) { k, out in
                    k.reduceBackward(n: n, S, x, s, axes: axes, scale: scale, out)
                }
                expectClose(fr, rr, tol: 1e-6, "backward over \(axes)")
                // Relevance R = S * y goes back in full: sum of R_in over the reduced axes = S * y.
                let total = zip(S[..<r.count], fy).reduce(0) { $0 + Double($1.0 * $1.1) }
                let back = fr[..<s.count].reduce(0) { $0 + Double($1) }
                #expect(abs(total - back) <= 1e-4 * max(abs(total), 1), "conservation over \(axes)")
            }
        }
    }

    @Test("torch.onnx.export of a graph with Max, Min at a shift (Slice, Pad), Concat, Mul, ReduceSum, ReduceMean, dilated, grouped and depthwise convolutions: forward equals onnxruntime, explanations equal PyTorch",
          arguments: [CKernelsBackend.Convolution.winograd, .direct])
    func torchOpsGraph(convolution: CKernelsBackend.Convolution) throws {
        let m = try ONNXImporter.load(path: fixturePath("ops_graph.onnx"))
        #expect(m.unsupported.isEmpty, "\(m.unsupported)")
        let ops = Set(m.graph.nodes.map { String($0.op.name.prefix { $0.isLetter }) })
        #expect(ops.isSuperset(of: ["Max", "Min", "Pad", "Slice", "ReduceSum", "ReduceMean", "Concat"]), "\(ops)")
        let f = try fixture("ops_graph")
        let ex = try Explainer(graph: m.graph, head: .identity, composite: try .preset("hp"),
                               kernels: CKernelsBackend(convolution: convolution))
        expectClose(try ex.embedding(try f.t("x1")), try f.t("ort.output").data, tol: 1e-4, "forward vs onnxruntime")
        try compareWithFixture(f, graph: m.graph, blockSize: 3, kernels: CKernelsBackend(convolution: convolution))
    }

    /// (in, out, kernel, stride, padding, dilation, groups)
    static let convCases: [(Int, Int, (Int, Int), (Int, Int), (Int, Int), (Int, Int), Int)] = [
        (6, 4, (3, 3), (1, 1), (2, 2), (2, 2), 1),  // dilated
        (8, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2),  // two groups
        (12, 12, (3, 3), (2, 2), (1, 1), (1, 1), 12),  // depthwise, stride 2
        (5, 10, (3, 5), (1, 2), (3, 2), (3, 1), 5),  // depthwise multiplier 2, dilated rows, strided columns
        (4, 8, (1, 1), (1, 1), (0, 0), (1, 1), 4),  // grouped 1 x 1
    ]

    @Test("dilated, grouped and depthwise convolutions: the forward equals torch's definition in pure Swift",
          arguments: isaPaths)
    func groupedConvolutions(isa: Int32) throws {
        try withISA(isa) {
            for (k, (cin, cout, kernel, stride, pad, dil, groups)) in Self.convCases.enumerated() {
                let conv = try Conv2d(weight: random(cout * cin / groups * kernel.0 * kernel.1, seed: UInt64(40 + k)),
                                      bias: random(cout, seed: UInt64(60 + k)), outChannels: cout, inChannels: cin,
                                      kernel: kernel, stride: stride, padding: pad, dilation: dil, groups: groups)
                let s = Shape3(cin, 11, 13)
                let x = random(s.count, seed: UInt64(80 + k))
                let g = try Graph(input: "x", nodes: [Graph.Node(name: "c", op: .layer(.conv2d(conv)), inputs: ["x"], output: "c")],
                                  output: "c")
                let ex = try Explainer(graph: g, head: .identity, composite: try .preset("hp"))
                let y = try ex.embedding(try Tensor(shape: [cin, 11, 13], data: x))
                expectClose(y, ReferenceKernels.conv2d(x, s, conv), tol: 1e-5, "case \(k): \(Layer.conv2d(conv).name)")
                // Rules see the layer's own weights only: flat's rho = 1 sets the real taps, not the zeros between.
                #expect(conv.spanWeight(.one).filter { $0 == 1 }.count == conv.weight.count)
            }
            #expect(message { _ = try Conv2d(weight: [Float](repeating: 0, count: 6 * 2 * 9), bias: nil, outChannels: 6,
                                             inChannels: 8, kernel: (3, 3), groups: 4) }
                == "conv: groups 4 must divide the input channels 8 and the output channels 6")
        }
    }

    @Test("the ops graph explained with the pure-Swift reference kernels equals PyTorch too")
    func torchOpsGraphReference() throws {
        let m = try ONNXImporter.load(path: fixturePath("ops_graph.onnx"))
        try compareWithFixture(fixture("ops_graph"), graph: m.graph, blockSize: 3, kernels: ReferenceKernels())
    }

    @Test("the ops graph: C kernels equal the reference kernels",
          arguments: ["hp", "epsilon-gamma-box", "max:proportional;min:proportional;first:zb;*:gamma=0.25"])
    func againstReference(spec: String) throws {
        try expectKernelsAgree(try opsGraph(seed: 3, bias: true), spec: spec, input: [3, 12, 14], outputs: 5,
                               blockSize: 2, patch: 2)
    }

    @Test("conservation on the bias-free ops graph: |sum R - y| <= 1e-4 |y|",
          arguments: ["hp", "*:gamma=0.25", "max:proportional;min:proportional;*:gamma=0.1"])
    func conservation(spec: String) throws {
        try expectConservation(try opsGraph(seed: 5, bias: false), spec: spec, input: [3, 12, 14], outputs: 7, patch: 2)
    }

    @Test("max / min selectors and the proportional rule: parsed, printed back, and refused on a convolution")
    func rules() throws {
        let spec = "max:proportional;min:zero;first:zb;*:gamma=0.25"
        #expect(try Composite.named(spec).description == spec)
        #expect(try Rule(parsing: "Proportional") == .proportional)
        let g = try opsGraph(seed: 1, bias: true)
        let bounds = Preprocessing.torchvision.bounds
        let ex = try Explainer(graph: g, composite: try .named(spec), bounds: bounds)
        #expect(ex.nodeRules["max"] == .proportional && ex.nodeRules["min"] == .zero && ex.nodeRules["c1"] == .zBox)
        #expect(message { _ = try Explainer(graph: g, composite: try .named("conv:proportional"), bounds: bounds) }
            .contains("rule proportional at node 'c1' (Conv2d(3, 6, 3x3, s1, p1)) is for Max and Min nodes only"))
    }

    @Test("malformed ops are errors that name the node")
    func malformed() throws {
        func n(_ name: String, _ op: Graph.Op, _ ins: [String]) -> Graph.Node {
            Graph.Node(name: name, op: op, inputs: ins, output: name)
        }
        let pooled = try Graph(input: "x", nodes: [
            n("p", .layer(.maxPool2d(Pool2d(kernel: (2, 2)))), ["x"]), n("m", .minimum, ["x", "p"]),
        ], output: "m")
        #expect(message { _ = try pooled.shapes(for: Shape3(3, 8, 8)) }
            == "shape mismatch for input 1 of node 'm' (Min): expected [3, 8, 8] like input 0, found [3, 4, 4]")
        let empty = try Graph(input: "x", nodes: [n("s", .slice(Slice3(start: Position3(0, 0, 8))), ["x"])], output: "s")
        #expect(message { _ = try empty.shapes(for: Shape3(3, 8, 8)) }
            == "shape mismatch for node 's' (Slice[:, :, 8:]): expected a non-empty slice, found input [3, 8, 8]")
        #expect(try empty.shapes(for: Shape3(3, 8, 9))["s"] == Shape3(3, 8, 1))
        #expect(message { _ = try Padding3(before: Position3(0, -1, 0), after: .zero) }
            == "padding must be >= 0 (got (0, -1, 0) before, (0, 0, 0) after; crop with a slice)")
        #expect(message { _ = try Graph(input: "x", nodes: [n("m", .maximum, ["x"])], output: "m") }
            == "invalid model graph: node 'm' (Max) has 1 inputs")
    }

    @Test("ONNX: reflect Pad, a strided Slice and a Max with a constant are refused by name; the rest imports")
    func unsupportedONNX() throws {
        let path = fixturePath("ops_unsupported.onnx")
        let m = try ONNXImporter.load(path: path)
        #expect(m.graph.output == "sum")
        #expect(try m.graph.shapes(for: Shape3(3, 8, 8))["sum"] == Shape3(1, 8, 8))
        let x = try Tensor(shape: [3, 8, 8], data: random(192, seed: 3))
        let y = try Explainer(graph: m.graph, head: .identity, composite: try .preset("hp")).embedding(x)
        let expected = (0..<64).map { i in (0..<3).reduce(Float(0)) { $0 + max(x.data[$1 * 64 + i], 0) } }
        expectClose(y, expected, tol: 1e-6, "ReduceSum of relu")
        #expect(m.unsupported.count == 3, "\(m.unsupported)")
        for (node, cause) in [("reflect_pad", "mode reflect"), ("strided_slice", "steps"), ("clamp", "Max")] {
            #expect(m.unsupported.contains { $0.contains(node) && $0.contains(cause) }, "\(node): \(m.unsupported)")
            let e = message { _ = try ONNXImporter.load(path: path, cut: .node(node)) }
            #expect(e.contains(node) && e.contains("not supported"), "\(e)")
        }
    }
}
