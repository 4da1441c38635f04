import Foundation

/// Layer normalization over the features (channels) at every position:
/// y = gamma (x - mean(x)) / sqrt(var(x) + epsilon) + beta, the statistics over the channels.
public struct LayerNorm: Sendable, Equatable {
    public var gamma: [Float]
    public var beta: [Float]
    public var epsilon: Float
    public init(gamma: [Float], beta: [Float], epsilon: Float) throws {
        guard gamma.count == beta.count, !gamma.isEmpty else {
            throw BiLRPError.shapeMismatch(what: "LayerNorm parameters", expected: "gamma and beta of one length",
                                           found: "\(gamma.count) and \(beta.count)")
        }
        self.gamma = gamma; self.beta = beta; self.epsilon = epsilon
    }
    public var features: Int { gamma.count }
}

/// The arithmetic of the transformer ops on the engine's features-major sequences (D, 1, T), and
/// their conservative relevance rules (Ali et al., "XAI for Transformers: Better Explanations
/// through Conservative Propagation", ICML 2022):
///
/// - LayerNorm (LN rule): the standard deviation is held constant, so the layer is the linear map
///   x -> gamma (x - mean x) / sigma + beta and takes LRP-epsilon like any linear layer.
/// - GELU (identity rule): the ratio gelu(z) / z is held constant; the relevance passes unchanged.
/// - Self-attention (AH rule): the attention weights are held constant, so o = A v is linear in v;
///   all relevance goes to the values (LRP-epsilon on that map), none to the queries and keys.
///
/// The loops here are serial Swift (small next to the linear layers' GEMMs at sentence lengths);
/// they are the reference the C kernels for them will be checked against.
///
/// With LRP-0 on the linear layers this is gradient x input of the network whose factors (sigma,
/// gelu(z) / z, A) are detached, which is how the tests check it against PyTorch.
enum TransformerOps {
    // MARK: LayerNorm

    /// y and 1 / sigma per position.
    static func layerNormForward(_ x: UnsafePointer<Float>, _ s: Shape3, _ ln: LayerNorm,
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
    static func layerNormBackward(n: Int, _ S: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ s: Shape3,
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
    static func geluForward(_ x: UnsafePointer<Float>, count: Int, _ y: UnsafeMutablePointer<Float>) {
        for i in 0..<count {
            let v = Double(x[i])
            y[i] = Float(0.5 * v * (1 + erf(v / 2.0.squareRoot())))
        }
    }

    /// x gelu'(x) = x (Phi(x) + x phi(x)): what the true gradient multiplies S = R / stab(gelu(x)) by.
    static func geluInputTimesSlope(_ x: UnsafePointer<Float>, count: Int, _ out: UnsafeMutablePointer<Float>) {
        for i in 0..<count {
            let v = Double(x[i])
            let slope = 0.5 * (1 + erf(v / 2.0.squareRoot())) + v * exp(-0.5 * v * v) / (2 * Double.pi).squareRoot()
            out[i] = Float(v * slope)
        }
    }

    // MARK: Self-attention

    /// o_h = softmax(q_h^T k_h / sqrt(dh)) applied to v_h for every head h (the head's dh features);
    /// keeps the weights A (heads, T, T), row t the weights of query token t over the key tokens.
    static func attentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, _ s: Shape3,
                                 heads: Int, _ o: UnsafeMutablePointer<Float>, weights A: UnsafeMutablePointer<Float>) {
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
    static func attentionValueBackward(n: Int, _ S: UnsafePointer<Float>, v: UnsafePointer<Float>, _ s: Shape3,
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
    static func attentionScoreBackward(n: Int, _ G: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                                       v: UnsafePointer<Float>, _ s: Shape3, heads: Int, weights A: UnsafePointer<Float>,
                                       _ Rq: UnsafeMutablePointer<Float>, _ Rk: UnsafeMutablePointer<Float>) {
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

    // MARK: Transposed steps (the token side, TokenSide.swift)

    /// In place, per functional: w <- gamma (w - mean_c w) / sigma at every position.
    static func layerNormTransposed(n: Int, _ w: UnsafeMutablePointer<Float>, _ s: Shape3, gamma: [Float],
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

    /// Per functional: o[c, i] = sum_j A_h[i, j] w[c, j], h the head of feature c: per head the
    /// product W_h A_h^T of (dh x T) and (T x T), on the pair-product GEMM.
    static func attentionMix(n: Int, _ w: UnsafePointer<Float>, _ s: Shape3, heads: Int, weights A: UnsafePointer<Float>,
                             _ o: UnsafeMutablePointer<Float>, _ kernels: any Kernels) throws {
        let t = s.width, dh = s.channels / heads, count = s.count
        for m in 0..<n {
            for h in 0..<heads {
                let offset = m * count + h * dh * t
                try kernels.pairProduct(p: dh, q: t, h: t, w + offset, A + h * t * t, o + offset)
            }
        }
    }
}
