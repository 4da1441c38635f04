import BiLRP
import Foundation

/// The transformer ops' reference twins: plain loops in the order of the formulas (statistics,
/// scores and softmax sums in double), which the C kernels (CKernels/transformer.c) are checked against.
extension ReferenceKernels {
    // MARK: LayerNorm

    /// y and 1 / sigma per position.
    public func layerNormForward(_ x: UnsafePointer<Float>, _ s: Shape3, _ ln: LayerNorm,
                                 _ y: UnsafeMutablePointer<Float>, inverseSigma: UnsafeMutablePointer<Float>) {
        let d = s.channels, t = s.height * s.width
        for p in 0..<t {
            var mean = 0.0
            for c in 0..<d { mean += Double(x[c * t + p]) }
            mean /= Double(d)
            var variance = 0.0
            for c in 0..<d { let e = Double(x[c * t + p]) - mean; variance += e * e }
            variance /= Double(d)
            let inv = 1 / (variance + Double(ln.epsilon)).squareRoot()
            inverseSigma[p] = Float(inv)
            for c in 0..<d {
                y[c * t + p] = Float((Double(x[c * t + p]) - mean) * inv) * ln.gamma[c] + ln.beta[c]
            }
        }
    }

    /// LN rule for a block of n relevances: with S = R / stab(y),
    /// R_in_i = x_i (gamma_i S_i - mean_j gamma_j S_j) / sigma.
    /// `exact` (the true gradient, sigma depending on x): with g = gamma S and xh = (x - mean x) / sigma,
    /// R_in_i = x_i (g_i - mean_j g_j - xh_i mean_j g_j xh_j) / sigma.
    public func layerNormBackward(n: Int, _ S: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ s: Shape3,
                                  gamma: [Float], inverseSigma: UnsafePointer<Float>, exact: Bool,
                                  _ Rin: UnsafeMutablePointer<Float>) {
        let d = s.channels, t = s.height * s.width, count = s.count
        var xh = [Float](repeating: 0, count: exact ? count : 0)
        if exact {
            for p in 0..<t {
                var mu: Float = 0
                for c in 0..<d { mu += x[c * t + p] }
                mu /= Float(d)
                for c in 0..<d { xh[c * t + p] = (x[c * t + p] - mu) * inverseSigma[p] }
            }
        }
        for m in 0..<n {
            let Sm = S + m * count, Rm = Rin + m * count
            for p in 0..<t {
                var mean: Float = 0, projected: Float = 0
                for c in 0..<d { mean += gamma[c] * Sm[c * t + p] }
                mean /= Float(d)
                if exact {
                    for c in 0..<d { projected += gamma[c] * Sm[c * t + p] * xh[c * t + p] }
                    projected /= Float(d)
                }
                let inv = inverseSigma[p]
                for c in 0..<d {
                    let shape = exact ? xh[c * t + p] * projected : 0
                    Rm[c * t + p] = x[c * t + p] * (gamma[c] * Sm[c * t + p] - mean - shape) * inv
                }
            }
        }
    }

    // MARK: GELU

    /// gelu(x) = x Phi(x) with the exact normal CDF (erf), as BERT's "gelu".
    public func geluForward(_ x: UnsafePointer<Float>, count: Int, _ y: UnsafeMutablePointer<Float>) {
        for i in 0..<count {
            let v = Double(x[i])
            y[i] = Float(0.5 * v * (1 + erf(v / 2.0.squareRoot())))
        }
    }

    /// x gelu'(x) = x (Phi(x) + x phi(x)): what the true gradient multiplies S = R / stab(gelu(x)) by.
    public func geluInputTimesSlope(_ x: UnsafePointer<Float>, count: Int, _ out: UnsafeMutablePointer<Float>) {
        for i in 0..<count {
            let v = Double(x[i])
            let slope = 0.5 * (1 + erf(v / 2.0.squareRoot())) + v * exp(-0.5 * v * v) / (2 * Double.pi).squareRoot()
            out[i] = Float(v * slope)
        }
    }

    // MARK: Self-attention

    /// o_h = softmax(q_h^T k_h / sqrt(dh)) applied to v_h for every head h (the head's dh features);
    /// keeps the weights A (heads, T, T), row t the weights of query token t over the key tokens.
    public func attentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, _ s: Shape3,
                                 heads: Int, _ o: UnsafeMutablePointer<Float>, weights A: UnsafeMutablePointer<Float>) throws {
        let d = s.channels, t = s.width, dh = d / heads
        let scale = 1 / Double(dh).squareRoot()
        for h in 0..<heads {
            let Ah = A + h * t * t
            var row = [Double](repeating: 0, count: t)
            for i in 0..<t {
                var top = -Double.infinity
                for j in 0..<t {
                    var dot = 0.0
                    for c in (h * dh)..<((h + 1) * dh) { dot += Double(q[c * t + i]) * Double(k[c * t + j]) }
                    row[j] = dot * scale
                    top = max(top, row[j])
                }
                var total = 0.0
                for j in 0..<t { row[j] = exp(row[j] - top); total += row[j] }
                for j in 0..<t { Ah[i * t + j] = Float(row[j] / total) }
            }
            for c in (h * dh)..<((h + 1) * dh) {
                for i in 0..<t {
                    var acc: Float = 0
                    for j in 0..<t { acc += Ah[i * t + j] * v[c * t + j] }
                    o[c * t + i] = acc
                }
            }
        }
    }

    /// AH rule for a block of n relevances: with S = R / stab(o), R_v[c, j] = v[c, j] sum_i A_h[i, j] S[c, i].
    public func attentionValueBackward(n: Int, _ S: UnsafePointer<Float>, v: UnsafePointer<Float>, _ s: Shape3,
                                       heads: Int, weights A: UnsafePointer<Float>, _ Rv: UnsafeMutablePointer<Float>) {
        let d = s.channels, t = s.width, dh = d / heads, count = s.count
        for m in 0..<n {
            let Sm = S + m * count, Rm = Rv + m * count
            for c in 0..<d {
                let Ah = A + (c / dh) * t * t
                for j in 0..<t {
                    var acc: Float = 0
                    for i in 0..<t { acc += Ah[i * t + j] * Sm[c * t + i] }
                    Rm[c * t + j] = v[c * t + j] * acc
                }
            }
        }
    }

    /// The true gradient through the softmax, for a block of n relevances with G = R / stab(o):
    /// per head dA[i, j] = sum_c G[c, i] v[c, j], dZ = A * (dA - rowsum(A * dA)), and with the scale
    /// 1 / sqrt(dh): R_q[c, i] = q[c, i] sum_j dZ[i, j] k[c, j] / sqrt(dh), R_k[c, j] = k[c, j] sum_i
    /// dZ[i, j] q[c, i] / sqrt(dh).
    public func attentionScoreBackward(n: Int, _ G: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                                       v: UnsafePointer<Float>, _ s: Shape3, heads: Int, weights A: UnsafePointer<Float>,
                                       _ Rq: UnsafeMutablePointer<Float>, _ Rk: UnsafeMutablePointer<Float>) throws {
        let d = s.channels, t = s.width, dh = d / heads, count = s.count
        let scale = 1 / Float(dh).squareRoot()
        var dZ = [Float](repeating: 0, count: t * t)
        for m in 0..<n {
            let Gm = G + m * count, Rqm = Rq + m * count, Rkm = Rk + m * count
            for h in 0..<heads {
                let Ah = A + h * t * t, c0 = h * dh, c1 = (h + 1) * dh
                for i in 0..<t {
                    var rowsum: Float = 0
                    for j in 0..<t {
                        var dA: Float = 0
                        for c in c0..<c1 { dA += Gm[c * t + i] * v[c * t + j] }
                        dZ[i * t + j] = dA
                        rowsum += Ah[i * t + j] * dA
                    }
                    for j in 0..<t { dZ[i * t + j] = Ah[i * t + j] * (dZ[i * t + j] - rowsum) * scale }
                }
                for c in c0..<c1 {
                    for i in 0..<t {
                        var gq: Float = 0
                        for j in 0..<t { gq += dZ[i * t + j] * k[c * t + j] }
                        Rqm[c * t + i] = q[c * t + i] * gq
                    }
                    for j in 0..<t {
                        var gk: Float = 0
                        for i in 0..<t { gk += dZ[i * t + j] * q[c * t + i] }
                        Rkm[c * t + j] = k[c * t + j] * gk
                    }
                }
            }
        }
    }

    /// In place, per functional: w <- gamma (w - mean_c w) / sigma at every position.
    public func layerNormTransposed(n: Int, _ w: UnsafeMutablePointer<Float>, _ s: Shape3, gamma: [Float],
                                    inverseSigma: UnsafePointer<Float>) {
        let d = s.channels, t = s.height * s.width, count = s.count
        for m in 0..<n {
            let wm = w + m * count
            for p in 0..<t {
                var mean: Float = 0
                for c in 0..<d { mean += wm[c * t + p] }
                mean /= Float(d)
                let inv = inverseSigma[p]
                for c in 0..<d { wm[c * t + p] = gamma[c] * (wm[c * t + p] - mean) * inv }
            }
        }
    }
}
