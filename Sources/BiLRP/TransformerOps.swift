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
/// The arithmetic is in the kernels (`Kernels.layerNormForward` ..., C in CKernels/transformer.c,
/// the reference twins in BiLRPReference); the attention's transposed step composes pair products.
///
/// With LRP-0 on the linear layers this is gradient x input of the network whose factors (sigma,
/// gelu(z) / z, A) are detached, which is how the tests check it against PyTorch.
enum TransformerOps {
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
