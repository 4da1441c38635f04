import BiLRP
import BiLRPReference
import CKernels
import Foundation
import Testing

/// Two outputs of one kernel call, from the C kernels and from the reference.
func both2(_ count1: Int, _ count2: Int,
           _ body: (any Kernels, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) throws -> Void) rethrows
    -> (fast: ([Float], [Float]), ref: ([Float], [Float])) {
    func run(_ k: any Kernels) throws -> ([Float], [Float]) {
        var a = [Float](repeating: .nan, count: count1), b = [Float](repeating: .nan, count: count2)
        try a.withUnsafeMutableBufferPointer { pa in
            try b.withUnsafeMutableBufferPointer { pb in try body(k, pa.baseAddress!, pb.baseAddress!) }
        }
        return (a, b)
    }
    return (try run(CKernelsBackend()), try run(ReferenceKernels()))
}

/// Sequence shapes (D features, T tokens, heads): one token, a sentence, more tokens than one C
/// block (64) with a short last block, and MiniLM's width.
let sequenceShapes: [(d: Int, t: Int, heads: Int)] = [(12, 1, 3), (24, 9, 3), (16, 70, 2), (384, 32, 12)]

@Suite("Transformer kernels (LayerNorm, GELU, attention): C against the Swift reference on every ISA path")
struct TransformerKernelTests {
    @Test("LayerNorm forward: y and 1 / sigma; with gamma 1 and beta 0 every token has mean 0 and variance 1", arguments: isaPaths)
    func layerNormForward(isa: Int32) throws {
        try withISA(isa) {
            for (d, t, _) in sequenceShapes {
                let s = Shape3(d, 1, t)
                let x = random(s.count, seed: UInt64(d * t)).map { $0 * 3 + 0.5 }
                for unit in [false, true] {
                    let ln = try LayerNorm(gamma: unit ? [Float](repeating: 1, count: d) : random(d, seed: 2),
                                           beta: unit ? [Float](repeating: 0, count: d) : random(d, seed: 3), epsilon: 1e-12)
                    let (fast, ref) = both2(s.count, t) { k, y, inv in k.layerNormForward(x, s, ln, y, inverseSigma: inv) }
                    expectClose(fast.0, ref.0, tol: 1e-6, "y, D \(d) T \(t)")
                    expectClose(fast.1, ref.1, tol: 1e-6, "1 / sigma, D \(d) T \(t)")
                    if unit {
                        for p in 0..<t {
                            let column = (0..<d).map { Double(fast.0[$0 * t + p]) }
                            let mean = column.reduce(0, +) / Double(d)
                            let variance = column.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(d)
                            #expect(abs(mean) < 1e-5 && abs(variance - 1) < 1e-4, "token \(p): mean \(mean), variance \(variance)")
                        }
                    }
                }
            }
        }
    }

    @Test("LayerNorm relevance (LN rule and the exact gradient) and its transposed map, n maps", arguments: isaPaths)
    func layerNormBackward(isa: Int32) throws {
        try withISA(isa) {
            for (d, t, _) in sequenceShapes {
                let s = Shape3(d, 1, t), n = 3
                let x = random(s.count, seed: 5), gamma = random(d, seed: 6)
                let ln = try LayerNorm(gamma: gamma, beta: random(d, seed: 7), epsilon: 1e-12)
                var y = [Float](repeating: 0, count: s.count), inv = [Float](repeating: 0, count: t)
                ReferenceKernels().layerNormForward(x, s, ln, &y, inverseSigma: &inv)
                let S = random(n * s.count, seed: 8)
                for exact in [false, true] {
                    let (fast, ref) = both(n * s.count) { k, out in
                        k.layerNormBackward(n: n, S, x, s, gamma: gamma, inverseSigma: inv, exact: exact, out)
                    }
                    expectClose(fast, ref, tol: 1e-5, "backward, exact \(exact), D \(d) T \(t)")
                }
                let (fast, ref) = both(n * s.count) { k, w in
                    w.update(from: S, count: S.count)
                    k.layerNormTransposed(n: n, w, s, gamma: gamma, inverseSigma: inv)
                }
                expectClose(fast, ref, tol: 1e-5, "transposed, D \(d) T \(t)")
            }
        }
    }

    @Test("GELU and x gelu'(x) over [-8, 8]", arguments: isaPaths)
    func gelu(isa: Int32) {
        withISA(isa) {
            let x = (0..<5003).map { Float($0) / 5002 * 16 - 8 }
            let (fy, ry) = both(x.count) { k, y in k.geluForward(x, count: x.count, y) }
            expectClose(fy, ry, tol: 1e-7, "gelu")
            let (fs, rs) = both(x.count) { k, y in k.geluInputTimesSlope(x, count: x.count, y) }
            expectClose(fs, rs, tol: 1e-7, "x gelu'(x)")
            #expect(abs(fy[0]) < 1e-6 && abs(fy[x.count - 1] - 8) < 1e-5, "gelu(-8) = 0, gelu(8) = 8")
        }
    }

    @Test("attention forward (o and the weights; rows of the weights sum to 1) and both relevance steps, n maps", arguments: isaPaths)
    func attention(isa: Int32) throws {
        try withISA(isa) {
            for (d, t, heads) in sequenceShapes {
                let s = Shape3(d, 1, t), n = 2
                let q = random(s.count, seed: 11, scale: 2), k = random(s.count, seed: 12, scale: 2), v = random(s.count, seed: 13)
                let (fast, ref) = try both2(s.count, heads * t * t) { kern, o, A in
                    try kern.attentionForward(q: q, k: k, v: v, s, heads: heads, o, weights: A)
                }
                expectClose(fast.0, ref.0, tol: 1e-5, "o, D \(d) T \(t)")
                expectClose(fast.1, ref.1, tol: 1e-5, "weights, D \(d) T \(t)")
                for row in 0..<(heads * t) {
                    let sum = fast.1[(row * t)..<((row + 1) * t)].reduce(0, +)
                    #expect(abs(sum - 1) < 1e-5, "row \(row) of the weights sums to \(sum)")
                }
                let A = ref.1, S = random(n * s.count, seed: 14)
                let (fv, rv) = both(n * s.count) { kern, out in
                    kern.attentionValueBackward(n: n, S, v: v, s, heads: heads, weights: A, out)
                }
                expectClose(fv, rv, tol: 1e-5, "values' relevance, D \(d) T \(t)")
                let (fqk, rqk) = try both2(n * s.count, n * s.count) { kern, Rq, Rk in
                    try kern.attentionScoreBackward(n: n, S, q: q, k: k, v: v, s, heads: heads, weights: A, Rq, Rk)
                }
                expectClose(fqk.0, rqk.0, tol: 1e-5, "queries' relevance, D \(d) T \(t)")
                expectClose(fqk.1, rqk.1, tol: 1e-5, "keys' relevance, D \(d) T \(t)")
            }
        }
    }
}
