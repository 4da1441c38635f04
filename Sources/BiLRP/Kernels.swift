import CKernels
import Foundation

/// Geometry of a convolution (or a linear layer as a 1 x 1 convolution on a 1 x 1 map). With
/// `groups` > 1 each output channel reads the inChannels / groups input channels of its group and
/// the weight is (outChannels, inChannels / groups, kernelH, kernelW); only the plain forward and
/// backward (`convForward(weight:)`, `convBackward(weight:)`, `lrpDirect`) take such a geometry,
/// and the backends prepare no other form for it.
public struct ConvGeometry: Sendable, Hashable {
    public var inChannels: Int, height: Int, width: Int
    public var outChannels: Int, kernelH: Int, kernelW: Int
    public var strideH: Int, strideW: Int, padH: Int, padW: Int
    public var groups: Int

    public init(
        inChannels: Int, height: Int, width: Int, outChannels: Int, kernelH: Int, kernelW: Int,
        strideH: Int = 1, strideW: Int = 1, padH: Int = 0, padW: Int = 0, groups: Int = 1
    ) {
        self.inChannels = inChannels; self.height = height; self.width = width
        self.outChannels = outChannels; self.kernelH = kernelH; self.kernelW = kernelW
        self.strideH = strideH; self.strideW = strideW; self.padH = padH; self.padW = padW
        self.groups = groups
    }

    public var outHeight: Int { (height + 2 * padH - kernelH) / strideH + 1 }
    public var outWidth: Int { (width + 2 * padW - kernelW) / strideW + 1 }
    public var inCount: Int { inChannels * height * width }
    public var outCount: Int { outChannels * outHeight * outWidth }
    /// Floats of the weight.
    public var weightCount: Int { outChannels * (inChannels / groups) * kernelH * kernelW }
    /// Multiply-adds of one forward (or one backward map).
    public var multiplyAdds: Int { outCount * (inChannels / groups) * kernelH * kernelW }
}

/// Geometry of a pooling layer; for adaptive pooling only the output size matters.
public struct PoolGeometry: Sendable, Hashable {
    public var channels: Int, height: Int, width: Int
    public var kernelH: Int, kernelW: Int, strideH: Int, strideW: Int, padH: Int, padW: Int
    public var outHeight: Int, outWidth: Int

    public init(channels: Int, height: Int, width: Int, pool: Pool2d) {
        self.channels = channels; self.height = height; self.width = width
        kernelH = pool.kernelH; kernelW = pool.kernelW; strideH = pool.strideH; strideW = pool.strideW
        padH = pool.padH; padW = pool.padW
        outHeight = (height + 2 * padH - kernelH) / strideH + 1
        outWidth = (width + 2 * padW - kernelW) / strideW + 1
    }

    public init(channels: Int, height: Int, width: Int, adaptiveTo outHeight: Int, _ outWidth: Int) {
        self.channels = channels; self.height = height; self.width = width
        kernelH = 0; kernelW = 0; strideH = 0; strideW = 0; padH = 0; padW = 0
        self.outHeight = outHeight; self.outWidth = outWidth
    }

    public var inCount: Int { channels * height * width }
    public var outCount: Int { channels * outHeight * outWidth }

    /// Non-overlapping windows (kernel = stride, no padding; VGG's 2 x 2) over the output of g: a
    /// position wins at most one window, so the fused kernels can unpool while they load.
    func windowsTile(_ g: ConvGeometry) -> Bool {
        kernelH == strideH && kernelW == strideW && padH == 0 && padW == 0
            && height == g.outHeight && width == g.outWidth && channels == g.outChannels
    }
}

/// The arithmetic an explanation needs. `CKernelsBackend` runs the C kernels; the
/// `BiLRPReference` module implements the same contract with plain Swift loops. The contracts are
/// those of `ckernels.h`: blocks of n maps are map-major.
public protocol Kernels: Sendable {
    func convForward(_ x: UnsafePointer<Float>, _ g: ConvGeometry, weight: UnsafePointer<Float>,
                     bias: UnsafePointer<Float>?, _ y: UnsafeMutablePointer<Float>) throws
    func convBackward(n: Int, _ s: UnsafePointer<Float>, _ g: ConvGeometry, weight: UnsafePointer<Float>,
                      _ c: UnsafeMutablePointer<Float>) throws
    /// s = R / stab(z), element-wise (n maps); s may be R (in place).
    func lrpDivide(n: Int, count: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float,
                   _ s: UnsafeMutablePointer<Float>)
    /// R = [R +] scale * a * c, element-wise (n maps; a shared by the maps, nil: 1); R may be c.
    func lrpProduct(n: Int, count: Int, _ a: UnsafePointer<Float>?, _ c: UnsafePointer<Float>, scale: Float,
                    _ R: UnsafeMutablePointer<Float>, accumulate: Bool)
    /// A sum's relevance split among its summands: outputs[j] = [outputs[j] +] inputs[j] * R / stab(z),
    /// element-wise over n maps (`accumulate[j]` chooses). An output may be R itself, or repeat (every
    /// repeat accumulating).
    func lrpShares(n: Int, count: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float,
                   inputs: [UnsafePointer<Float>], outputs: [UnsafeMutablePointer<Float>], accumulate: [Bool])
    func clamp(count: Int, _ x: UnsafePointer<Float>, positive: Bool, _ y: UnsafeMutablePointer<Float>)
    func maxPoolForward(_ x: UnsafePointer<Float>, _ g: PoolGeometry, _ y: UnsafeMutablePointer<Float>,
                        argmax: UnsafeMutablePointer<Int32>)
    func maxPoolBackward(n: Int, _ R: UnsafePointer<Float>, _ g: PoolGeometry, argmax: UnsafePointer<Int32>,
                         _ Rin: UnsafeMutablePointer<Float>)
    func avgPoolForward(_ x: UnsafePointer<Float>, _ g: PoolGeometry, _ y: UnsafeMutablePointer<Float>)
    func avgPoolBackward(n: Int, _ s: UnsafePointer<Float>, _ g: PoolGeometry, _ c: UnsafeMutablePointer<Float>)
    func adaptiveAvgPoolForward(_ x: UnsafePointer<Float>, _ g: PoolGeometry, _ y: UnsafeMutablePointer<Float>)
    func adaptiveAvgPoolBackward(n: Int, _ s: UnsafePointer<Float>, _ g: PoolGeometry,
                                 _ c: UnsafeMutablePointer<Float>)
    func patchPool(n: Int, _ R: UnsafePointer<Float>, _ shape: Shape3, patch: Int, _ out: UnsafeMutablePointer<Float>)
    /// For each of n maps, dst's box at dstAt = [dst +] src's box at srcAt (ck_copy_box); the rest
    /// of dst untouched. Pad and Slice, both ways.
    func copyBox(n: Int, _ src: UnsafePointer<Float>, _ srcShape: Shape3, at srcAt: Position3,
                 _ dst: UnsafeMutablePointer<Float>, _ dstShape: Shape3, at dstAt: Position3, box: Shape3,
                 accumulate: Bool)
    /// y = the element-wise max (or min) of the inputs, winner = the first input that gives it.
    func extremumForward(_ x: [UnsafePointer<Float>], count: Int, maximum: Bool, _ y: UnsafeMutablePointer<Float>,
                         winner: UnsafeMutablePointer<Int32>)
    /// Winner-take-all to input j: Rin = R where j won, else 0 (n maps).
    func extremumBackward(n: Int, count: Int, _ R: UnsafePointer<Float>, winner: UnsafePointer<Int32>, input j: Int,
                          _ Rin: UnsafeMutablePointer<Float>)
    /// y = scale * the sum of x over `axes` (keepdims).
    func reduceForward(_ x: UnsafePointer<Float>, _ s: Shape3, axes: Axes3, scale: Float, _ y: UnsafeMutablePointer<Float>)
    /// Rin = scale * a * S broadcast over `axes` (n maps; S of the reduced shape).
    func reduceBackward(n: Int, _ S: UnsafePointer<Float>, _ a: UnsafePointer<Float>, _ s: Shape3, axes: Axes3,
                        scale: Float, _ Rin: UnsafeMutablePointer<Float>)
    func pairProduct(p: Int, q: Int, h: Int, _ A: UnsafePointer<Float>, _ B: UnsafePointer<Float>,
                     _ R: UnsafeMutablePointer<Float>) throws

    // Transformer ops on features-major sequences (D, 1, T); TransformerOps.swift says the rules.
    /// LayerNorm of every token over its D features: y, and 1 / sigma per token.
    func layerNormForward(_ x: UnsafePointer<Float>, _ s: Shape3, _ ln: LayerNorm, _ y: UnsafeMutablePointer<Float>,
                          inverseSigma: UnsafeMutablePointer<Float>)
    /// LN rule for n maps, S = R / stab(y): Rin = x (gamma S - mean_c gamma S) / sigma; `exact`: the
    /// true gradient x input, which also subtracts xh mean_c(gamma S xh), xh = (x - mean x) / sigma.
    func layerNormBackward(n: Int, _ S: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ s: Shape3, gamma: [Float],
                           inverseSigma: UnsafePointer<Float>, exact: Bool, _ Rin: UnsafeMutablePointer<Float>)
    /// The LN rule's transposed map for n functionals, in place: w <- gamma (w - mean_c w) / sigma.
    func layerNormTransposed(n: Int, _ w: UnsafeMutablePointer<Float>, _ s: Shape3, gamma: [Float],
                             inverseSigma: UnsafePointer<Float>)
    /// gelu(x) = x Phi(x), the exact normal CDF (BERT's "gelu").
    func geluForward(_ x: UnsafePointer<Float>, count: Int, _ y: UnsafeMutablePointer<Float>)
    /// x gelu'(x): what the true gradient multiplies S = R / stab(gelu(x)) by.
    func geluInputTimesSlope(_ x: UnsafePointer<Float>, count: Int, _ out: UnsafeMutablePointer<Float>)
    /// o_h = softmax(q_h^T k_h / sqrt(dh)) applied to v_h per head; keeps the weights A (heads, T, T).
    func attentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, _ s: Shape3,
                          heads: Int, _ o: UnsafeMutablePointer<Float>, weights A: UnsafeMutablePointer<Float>) throws
    /// AH rule for n maps, S = R / stab(o): Rv[c, j] = v[c, j] sum_i A_h[i, j] S[c, i].
    func attentionValueBackward(n: Int, _ S: UnsafePointer<Float>, v: UnsafePointer<Float>, _ s: Shape3,
                                heads: Int, weights A: UnsafePointer<Float>, _ Rv: UnsafeMutablePointer<Float>)
    /// The true gradient x input through the softmax to the queries and keys, n maps, G = R / stab(o).
    func attentionScoreBackward(n: Int, _ G: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                                v: UnsafePointer<Float>, _ s: Shape3, heads: Int, weights A: UnsafePointer<Float>,
                                _ Rq: UnsafeMutablePointer<Float>, _ Rk: UnsafeMutablePointer<Float>) throws

    /// Floats of a convolution weight prepared once per model and rule for a faster forward (packed
    /// for the micro-kernels), or nil when this backend has no such path (then `convForward(weight:)`
    /// is used). `prepareForward(weight:_:)` returns the form as an array.
    func forwardFormCount(_ g: ConvGeometry) -> Int?
    /// Writes all `forwardFormCount(g)` floats of that form from the weight of g.
    func writeForwardForm(weight: UnsafePointer<Float>, _ g: ConvGeometry, into form: UnsafeMutablePointer<Float>)
    /// The forward with a weight from `prepareForward`; the same results as with the plain weight.
    func convForward(_ x: UnsafePointer<Float>, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                     bias: UnsafePointer<Float>?, _ y: UnsafeMutablePointer<Float>) throws
    /// Floats of weights prepared once per model and rule for a faster relevance backward of this
    /// layer, or nil when this backend has no faster path for it (then `convBackward` is used).
    /// `prepareBackward(weight:_:)` returns the form as an array.
    func backwardFormCount(_ g: ConvGeometry) -> Int?
    /// Writes all `backwardFormCount(g)` floats of that form from the (forward) weight of g.
    func writeBackwardForm(weight: UnsafePointer<Float>, _ g: ConvGeometry, into form: UnsafeMutablePointer<Float>) throws
    /// The relevance backward with weights from `prepareBackward`.
    func convBackward(n: Int, _ s: UnsafePointer<Float>, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                      _ c: UnsafeMutablePointer<Float>) throws
    /// One pass of a rule by the direct path (any convolution or linear layer), for the terms t with
    /// weights W_t and inputs a_t (nil: 1): Rin = [Rin +] scale * sum_t a_t * conv^T_t(R / stab(z)).
    /// By default the separate steps (divide, then a backward and a product per term).
    func lrpDirect(n: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float, _ g: ConvGeometry,
                   weights: [UnsafePointer<Float>], inputs: [UnsafePointer<Float>?], scale: Float,
                   _ Rin: UnsafeMutablePointer<Float>, accumulate: Bool) throws
    /// `lrpTerm` for a layer followed by a max-pool whose backward has not run: Rp is the relevance
    /// at the pool's output (n, pool.outCount) and argmax its winners. By default the pool's
    /// winner-take-all backward into a temporary block, then `lrpTerm`.
    func lrpTermUnpooling(n: Int, _ Rp: UnsafePointer<Float>, argmax: UnsafePointer<Int32>, _ pool: PoolGeometry,
                          _ z: UnsafePointer<Float>, epsilon: Float, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                          _ a: UnsafePointer<Float>?, scale: Float, _ Rin: UnsafeMutablePointer<Float>,
                          accumulate: Bool) throws
    /// Weights prepared once per model and rule for `lrpTermSparse`, or nil when this backend has
    /// no sparse path for the layer.
    func prepareSparseBackward(weight: [Float], _ g: ConvGeometry) -> [Float]?
    /// Whether `prepareSparseBackward` gives weights for this layer (the explainer prepares them on
    /// first use only: most layers never see relevance sparse enough).
    func hasSparseBackward(_ g: ConvGeometry) -> Bool
    /// The density of a layer's relevance (fraction of non-zero values of a map) below which the
    /// explainer runs `lrpTermSparse` for it instead of `lrpTerm`: 0 never, above 1 always.
    var sparseBelowDensity: Double { get }
    /// One rule term gathered over the non-zero relevance only, with weights from
    /// `prepareSparseBackward`: Rin = [Rin +] scale * a * conv^T(R / stab(z)), the same as `lrpTerm`
    /// up to rounding. With `pooled`, R is the relevance at the output of that max-pool (above this
    /// layer) and is unpooled to its winners on the way.
    func lrpTermSparse(n: Int, _ R: UnsafePointer<Float>, pooled: (argmax: UnsafePointer<Int32>, pool: PoolGeometry)?,
                       _ z: UnsafePointer<Float>, epsilon: Float, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                       _ a: UnsafePointer<Float>?, scale: Float, _ Rin: UnsafeMutablePointer<Float>, accumulate: Bool) throws
    /// The patch side of a mixed-mode explanation (`ck_cells_*` in ckernels.h); map is (H, W).
    /// dst = src at the same map position (0 where src's cell does not reach or off the map) * factor.
    func cellsLoad(channels: Int, map: (Int, Int), from: CellLayout, _ src: UnsafePointer<Float>, to: CellLayout,
                   factor: UnsafePointer<Float>?, _ dst: UnsafeMutablePointer<Float>)
    /// v = [v +] scale * o / stab(z) inside the map, 0 outside.
    func cellsScale(channels: Int, map: (Int, Int), _ layout: CellLayout, _ o: UnsafePointer<Float>,
                    _ z: UnsafePointer<Float>, epsilon: Float, scale: Float, _ v: UnsafeMutablePointer<Float>,
                    accumulate: Bool)
    /// The transpose of the max-pool's winner-take-all backward, per cell (pre: the pool's input map).
    func cellsUnpool(_ pool: PoolGeometry, argmax: UnsafePointer<Int32>, from: CellLayout, _ pre: UnsafePointer<Float>,
                     to: CellLayout, _ post: UnsafeMutablePointer<Float>)
    /// A[p * lda + m] = sum over channels and in-map pixels of cell p of v * R[m], R (n, C, H, W).
    func cellsContract(channels: Int, map: (Int, Int), _ layout: CellLayout, _ v: UnsafePointer<Float>, n: Int,
                       _ R: UnsafePointer<Float>, _ A: UnsafeMutablePointer<Float>, lda: Int) throws
    /// Floats of the cells of `layout` packed for `cellsContract(packed:)`, or 0 when the layout's
    /// cells do not sit at unit steps along the grid rows (ck_cells_lanes_size) or this backend has
    /// no such path.
    func cellsPackedCount(channels: Int, _ layout: CellLayout) -> Int
    /// v packed for `cellsContract(packed:)` (cellsPackedCount floats).
    func cellsPack(channels: Int, map: (Int, Int), _ layout: CellLayout, _ v: UnsafePointer<Float>,
                   _ packed: UnsafeMutablePointer<Float>)
    /// `cellsContract` from the packed cells: the same sums, 16 cells in the lanes of a vector.
    func cellsContract(channels: Int, map: (Int, Int), _ layout: CellLayout, packed: UnsafePointer<Float>, n: Int,
                       _ R: UnsafePointer<Float>, _ A: UnsafeMutablePointer<Float>, lda: Int) throws
    /// A 3 x 3, stride 1, padding 1 convolution weight prepared for `convForward(winograd:)`, or nil
    /// when this backend has no such path. The patch side's convolutions run on it.
    func prepareWinogradForward(weight: [Float], _ g: ConvGeometry) throws -> [Float]?
    /// y = conv2d(x) without bias, with the weight from `prepareWinogradForward`.
    func convForward(_ x: UnsafePointer<Float>, _ g: ConvGeometry, winograd: UnsafePointer<Float>,
                     _ y: UnsafeMutablePointer<Float>) throws
    /// Whether explanations run their lower layers on the patch side (`Explainer.patchSidePlan`):
    /// nil lets the explainer decide by its cost model, 0 never, k the first k layers.
    var patchSideLayers: Int? { get }
    /// One rule term with prepared weights, the element-wise steps fused:
    /// Rin = [Rin +] scale * a * conv^T(R / stab(z)). By default the three separate steps.
    func lrpTerm(n: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float, _ g: ConvGeometry,
                 prepared: UnsafePointer<Float>, _ a: UnsafePointer<Float>?, scale: Float,
                 _ Rin: UnsafeMutablePointer<Float>, accumulate: Bool) throws
}

extension Kernels {
    /// The prepared forward form of a weight (`forwardFormCount`) as an array; nil without one, or
    /// when the weight is not the size g says.
    public func prepareForward(weight: [Float], _ g: ConvGeometry) -> [Float]? {
        guard let count = forwardFormCount(g), weight.count == g.weightCount else { return nil }
        return [Float](unsafeUninitializedCapacity: count) { p, n in
            writeForwardForm(weight: weight, g, into: p.baseAddress!)
            n = count
        }
    }

    /// The prepared backward form of a weight (`backwardFormCount`) as an array, nil without one.
    public func prepareBackward(weight: [Float], _ g: ConvGeometry) throws -> [Float]? {
        guard let count = backwardFormCount(g) else { return nil }
        return try [Float](unsafeUninitializedCapacity: count) { p, n in
            try writeBackwardForm(weight: weight, g, into: p.baseAddress!)
            n = count
        }
    }

    public func forwardFormCount(_ g: ConvGeometry) -> Int? { nil }
    public func writeForwardForm(weight: UnsafePointer<Float>, _ g: ConvGeometry, into form: UnsafeMutablePointer<Float>) {
        preconditionFailure("writeForwardForm without forwardFormCount")
    }
    public func convForward(_ x: UnsafePointer<Float>, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                            bias: UnsafePointer<Float>?, _ y: UnsafeMutablePointer<Float>) throws {
        preconditionFailure("convForward(prepared:) without prepareForward")
    }
    public func backwardFormCount(_ g: ConvGeometry) -> Int? { nil }
    public func writeBackwardForm(weight: UnsafePointer<Float>, _ g: ConvGeometry,
                                  into form: UnsafeMutablePointer<Float>) throws {
        preconditionFailure("writeBackwardForm without backwardFormCount")
    }
    public func convBackward(n: Int, _ s: UnsafePointer<Float>, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                             _ c: UnsafeMutablePointer<Float>) throws {
        preconditionFailure("convBackward(prepared:) without prepareBackward")
    }
    public func prepareSparseBackward(weight: [Float], _ g: ConvGeometry) -> [Float]? { nil }
    public func hasSparseBackward(_ g: ConvGeometry) -> Bool { false }
    public var sparseBelowDensity: Double { 0 }
    public var patchSideLayers: Int? { 0 }
    public func prepareWinogradForward(weight: [Float], _ g: ConvGeometry) throws -> [Float]? { nil }
    public func cellsPackedCount(channels: Int, _ layout: CellLayout) -> Int { 0 }
    public func cellsPack(channels: Int, map: (Int, Int), _ layout: CellLayout, _ v: UnsafePointer<Float>,
                          _ packed: UnsafeMutablePointer<Float>) {
        preconditionFailure("cellsPack without cellsPackedCount")
    }
    public func cellsContract(channels: Int, map: (Int, Int), _ layout: CellLayout, packed: UnsafePointer<Float>,
                              n: Int, _ R: UnsafePointer<Float>, _ A: UnsafeMutablePointer<Float>, lda: Int) throws {
        preconditionFailure("cellsContract(packed:) without cellsPackedCount")
    }
    public func convForward(_ x: UnsafePointer<Float>, _ g: ConvGeometry, winograd: UnsafePointer<Float>,
                            _ y: UnsafeMutablePointer<Float>) throws {
        preconditionFailure("convForward(winograd:) without prepareWinogradForward")
    }
    public func lrpTermSparse(n: Int, _ R: UnsafePointer<Float>,
                              pooled: (argmax: UnsafePointer<Int32>, pool: PoolGeometry)?, _ z: UnsafePointer<Float>,
                              epsilon: Float, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                              _ a: UnsafePointer<Float>?, scale: Float, _ Rin: UnsafeMutablePointer<Float>,
                              accumulate: Bool) throws {
        preconditionFailure("lrpTermSparse without prepareSparseBackward")
    }
    public func lrpTermUnpooling(n: Int, _ Rp: UnsafePointer<Float>, argmax: UnsafePointer<Int32>,
                                 _ pool: PoolGeometry, _ z: UnsafePointer<Float>, epsilon: Float, _ g: ConvGeometry,
                                 prepared: UnsafePointer<Float>, _ a: UnsafePointer<Float>?, scale: Float,
                                 _ Rin: UnsafeMutablePointer<Float>, accumulate: Bool) throws {
        try unpoolThenTerm(n: n, Rp, argmax: argmax, pool, z, epsilon: epsilon, g, prepared: prepared, a, scale: scale,
                       Rin, accumulate: accumulate)
    }

    /// The two steps of `lrpTermUnpooling`: the pool's backward into a temporary block, then the term.
    func unpoolThenTerm(n: Int, _ Rp: UnsafePointer<Float>, argmax: UnsafePointer<Int32>, _ pool: PoolGeometry,
                        _ z: UnsafePointer<Float>, epsilon: Float, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                        _ a: UnsafePointer<Float>?, scale: Float, _ Rin: UnsafeMutablePointer<Float>,
                        accumulate: Bool) throws {
        try withUnpooled(n: n, Rp, argmax: argmax, pool) { R in
            try lrpTerm(n: n, R, z, epsilon: epsilon, g, prepared: prepared, a, scale: scale, Rin, accumulate: accumulate)
        }
    }

    /// body with the max-pool's winner-take-all backward of Rp in a temporary block (n, pool.inCount).
    func withUnpooled(n: Int, _ Rp: UnsafePointer<Float>, argmax: UnsafePointer<Int32>, _ pool: PoolGeometry,
                      _ body: (UnsafePointer<Float>) throws -> Void) rethrows {
        let R = UnsafeMutablePointer<Float>.allocate(capacity: n * pool.inCount)
        defer { R.deallocate() }
        maxPoolBackward(n: n, Rp, pool, argmax: argmax, R)
        try body(UnsafePointer(R))
    }

    public func lrpDirect(n: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float,
                          _ g: ConvGeometry, weights: [UnsafePointer<Float>], inputs: [UnsafePointer<Float>?],
                          scale: Float, _ Rin: UnsafeMutablePointer<Float>, accumulate: Bool) throws {
        try composedLrpDirect(n: n, R, z, epsilon: epsilon, g, weights: weights, inputs: inputs, scale: scale, Rin,
                              accumulate: accumulate)
    }

    /// `lrpDirect` in three steps: divide, then per term the convolution backward and the product.
    func composedLrpDirect(n: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float,
                           _ g: ConvGeometry, weights: [UnsafePointer<Float>], inputs: [UnsafePointer<Float>?],
                           scale: Float, _ Rin: UnsafeMutablePointer<Float>, accumulate: Bool) throws {
        let s = UnsafeMutablePointer<Float>.allocate(capacity: n * g.outCount)
        let c = UnsafeMutablePointer<Float>.allocate(capacity: n * g.inCount)
        defer { s.deallocate(); c.deallocate() }
        lrpDivide(n: n, count: g.outCount, R, z, epsilon: epsilon, s)
        for (t, (w, a)) in zip(weights, inputs).enumerated() {
            try convBackward(n: n, UnsafePointer(s), g, weight: w, c)
            lrpProduct(n: n, count: g.inCount, a, UnsafePointer(c), scale: scale, Rin, accumulate: accumulate || t > 0)
        }
    }
    public func lrpTerm(n: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float, _ g: ConvGeometry,
                        prepared: UnsafePointer<Float>, _ a: UnsafePointer<Float>?, scale: Float,
                        _ Rin: UnsafeMutablePointer<Float>, accumulate: Bool) throws {
        let s = UnsafeMutablePointer<Float>.allocate(capacity: n * g.outCount)
        let c = UnsafeMutablePointer<Float>.allocate(capacity: n * g.inCount)
        defer { s.deallocate(); c.deallocate() }
        lrpDivide(n: n, count: g.outCount, R, z, epsilon: epsilon, s)
        try convBackward(n: n, UnsafePointer(s), g, prepared: prepared, c)
        lrpProduct(n: n, count: g.inCount, a, UnsafePointer(c), scale: scale, Rin, accumulate: accumulate)
    }
}

/// The C kernels (OpenMP or libdispatch, runtime ISA dispatch).
public struct CKernelsBackend: Kernels {
    /// How the relevance backward of 3x3, stride 1, padding 1 convolutions is computed.
    public enum Convolution: String, Sendable {
        /// Winograd F(4x4, 3x3): about 4x fewer multiplications; rounding differs from direct by
        /// about 1e-6 of the largest value (measured by the tests against the float64 reference).
        case winograd
        /// im2col-free GEMM + col2im, the same arithmetic as the reference.
        case direct
    }

    public var convolution: Convolution

    /// Relevance density below which a stride-1 layer's backward skips the zero relevance
    /// (ck_sparse_lrp) instead of running Winograd: 0 never, above 1 always. Only with `.winograd`
    /// (`.direct` is the plain reference path). The default, 0.2, from VGG-16 on the motorcycle
    /// pair, both paths forced per layer (2 threads, s per input): at 128 x 128 sparse wins on
    /// conv2_2 (18 % non-zero: 0.14 vs 0.19), conv3_3 (14 %: 0.10 vs 0.17), conv4_3 (7.5 %: 0.07 vs
    /// 0.16) and conv5_3 (3.5 %: 0.015 vs 0.05), ties on conv1_2 (21 %) and conv5_1/5_2 (23-26 %),
    /// loses from 32 % up (Winograd does a quarter of the direct multiplications). At 224 x 224
    /// (blocks of 5 maps) the same split, with conv2_2 a tie, and conv5_1/5_2 (23-24 %) faster
    /// sparse: at 14 x 14 a third of Winograd's tiles is padding, and the explainer scales the
    /// threshold by that (`Explainer.useSparse`).
    public var sparseBelowDensity: Double

    public static let defaultSparseBelowDensity = 0.2

    /// How many of the model's first layers run on the patch side (`Explainer.patchSidePlan`):
    /// nil, the default, lets the explainer's cost model choose; 0 never (every layer by the h
    /// backward passes). Only with `.winograd` (`.direct` is the plain reference path).
    public var patchSideLayers: Int?

    /// `BILRP_CONV=direct` in the environment selects the direct path by default;
    /// `BILRP_SPARSE=off|always|<density>` sets `sparseBelowDensity`;
    /// `BILRP_PATCH_SIDE=off|auto|<layers>` sets `patchSideLayers`.
    public init(convolution: Convolution? = nil, sparseBelowDensity: Double? = nil, patchSideLayers: Int?? = nil) {
        let env = ProcessInfo.processInfo.environment
        let mode = convolution ?? Convolution(rawValue: env["BILRP_CONV"] ?? "") ?? .winograd
        self.convolution = mode
        if let patchSideLayers {
            self.patchSideLayers = mode == .direct ? 0 : patchSideLayers
        } else {
            switch env["BILRP_PATCH_SIDE"] ?? "" {
            case "off": self.patchSideLayers = 0
            case let v: self.patchSideLayers = mode == .direct ? 0 : Int(v)
            }
        }
        self.sparseBelowDensity = sparseBelowDensity ?? {
            switch env["BILRP_SPARSE"] ?? "" {
            case "off": return 0
            case "always": return 2
            case let v: return Double(v) ?? Self.defaultSparseBelowDensity
            }
        }()
    }

    /// What is wrong with the `BILRP_*` settings in `env` (the process environment by default):
    /// one line per variable whose value the kernels would not understand, naming it, its value
    /// and what it accepts. Unset and empty variables are fine. The kernels themselves read an
    /// unknown value as the default; the `bilrp` command refuses to start with one.
    public static func environmentProblems(_ env: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        func isCount(_ v: String, atLeast lo: Int) -> Bool { Int(v).map { $0 >= lo } ?? false }
        let rules: [(name: String, accepts: String, ok: (String) -> Bool)] = [
            ("BILRP_ISA", "avx512, avx2, neon or portable", { ["avx512", "avx2", "neon", "portable"].contains($0) }),
            ("BILRP_THREADS", "a whole number of threads, 1 or more", { isCount($0, atLeast: 1) }),
            ("BILRP_CONV", "winograd or direct", { Convolution(rawValue: $0) != nil }),
            ("BILRP_WINOGRAD", "fused or chunked", { ["fused", "chunked"].contains($0) }),
            ("BILRP_SPARSE", "off, always or a density (a number, 0 or more)", {
                $0 == "off" || $0 == "always" || (Double($0).map { $0 >= 0 && $0.isFinite } ?? false)
            }),
            ("BILRP_PATCH_SIDE", "off, auto or a number of layers (0 or more)", {
                $0 == "off" || $0 == "auto" || isCount($0, atLeast: 0)
            }),
            ("BILRP_BUFFER_CACHE_MB", "a whole number of MB, 0 or more", { isCount($0, atLeast: 0) }),
        ]
        return rules.compactMap { r in
            guard let v = env[r.name], !v.isEmpty, !r.ok(v) else { return nil }
            return "\(r.name)='\(v)' is not valid: it takes \(r.accepts)"
        }
    }

    /// Stride 1, at least 16 input channels (an RGB input layer stays direct), `.winograd` mode.
    public func hasSparseBackward(_ g: ConvGeometry) -> Bool {
        convolution == .winograd && sparseBelowDensity > 0 && g.groups == 1 && g.strideH == 1 && g.strideW == 1
            && g.inChannels >= 16
    }

    public func prepareSparseBackward(weight: [Float], _ g: ConvGeometry) -> [Float]? {
        guard hasSparseBackward(g) else { return nil }
        let count = ck_sparse_weights_size(c(g.outChannels), c(g.inChannels), c(g.kernelH), c(g.kernelW))
        var w = [Float](repeating: 0, count: count)
        w.withUnsafeMutableBufferPointer {
            ck_sparse_weights(weight, c(g.outChannels), c(g.inChannels), c(g.kernelH), c(g.kernelW), $0.baseAddress!)
        }
        return w
    }

    /// Non-overlapping pools are unpooled as s is packed (only the winners are visited); others
    /// first into a temporary block.
    public func lrpTermSparse(n: Int, _ R: UnsafePointer<Float>,
                              pooled: (argmax: UnsafePointer<Int32>, pool: PoolGeometry)?, _ z: UnsafePointer<Float>,
                              epsilon: Float, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                              _ a: UnsafePointer<Float>?, scale: Float, _ Rin: UnsafeMutablePointer<Float>,
                              accumulate: Bool) throws {
        precondition(g.strideH == 1 && g.strideW == 1, "the sparse backward is for stride-1 convolutions")
        func run(_ R: UnsafePointer<Float>, _ argmax: UnsafePointer<Int32>?, _ hp: Int, _ wp: Int) throws {
            try check(ck_sparse_lrp(c(n), R, argmax, c(hp), c(wp), z, epsilon, c(g.outChannels), c(g.outHeight), c(g.outWidth),
                          prepared, c(g.inChannels), c(g.height), c(g.width), c(g.kernelH), c(g.kernelW), c(g.padH),
                          c(g.padW), a, scale, accumulate ? 1 : 0, Rin), "the sparse backward")
        }
        guard let (argmax, pool) = pooled else { return try run(R, nil, 0, 0) }
        if pool.windowsTile(g) { return try run(R, argmax, pool.outHeight, pool.outWidth) }
        try withUnpooled(n: n, R, argmax: argmax, pool) { try run($0, nil, 0, 0) }
    }

    /// The Winograd backward weights: for 3 x 3, stride 1, padding 1 and 16 or more input
    /// channels. Few output channels of the backward (an RGB input layer) leave the GEMMs too thin
    /// to pay for the transforms: direct is faster there.
    public func backwardFormCount(_ g: ConvGeometry) -> Int? {
        guard convolution == .winograd, g.groups == 1, g.kernelH == 3, g.kernelW == 3, g.strideH == 1, g.strideW == 1,
              g.padH == 1, g.padW == 1, g.inChannels >= 16 else { return nil }
        return ck_winograd_weights_size(c(g.inChannels), c(g.outChannels))
    }

    public func writeBackwardForm(weight: UnsafePointer<Float>, _ g: ConvGeometry,
                                  into u: UnsafeMutablePointer<Float>) throws {
        try check(ck_winograd_weights(weight, c(g.inChannels), c(g.outChannels), 1, u), "the Winograd weights")
    }

    /// As `prepareBackward`, for the forward: 16 or more channels in and out.
    public func prepareWinogradForward(weight: [Float], _ g: ConvGeometry) throws -> [Float]? {
        guard convolution == .winograd, g.groups == 1, g.kernelH == 3, g.kernelW == 3, g.strideH == 1,
              g.strideW == 1, g.padH == 1, g.padW == 1, g.inChannels >= 16, g.outChannels >= 16 else { return nil }
        var u = [Float](repeating: 0, count: ck_winograd_weights_size(c(g.outChannels), c(g.inChannels)))
        try u.withUnsafeMutableBufferPointer {
            try check(ck_winograd_weights(weight, c(g.outChannels), c(g.inChannels), 0, $0.baseAddress!), "the Winograd weights")
        }
        return u
    }

    public func convForward(_ x: UnsafePointer<Float>, _ g: ConvGeometry, winograd: UnsafePointer<Float>,
                            _ y: UnsafeMutablePointer<Float>) throws {
        try check(ck_winograd_conv3x3(1, x, c(g.inChannels), c(g.height), c(g.width), winograd, c(g.outChannels), y), "the Winograd convolution")
    }

    public func convBackward(n: Int, _ s: UnsafePointer<Float>, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                             _ cOut: UnsafeMutablePointer<Float>) throws {
        try check(ck_winograd_conv3x3(c(n), s, c(g.outChannels), c(g.height), c(g.width), prepared, c(g.inChannels), cOut), "the Winograd convolution")
    }

    /// Non-overlapping pools (kernel = stride, no padding; VGG's 2 x 2): unpooled as the Winograd
    /// input transform loads its rows (ck_winograd_lrp_unpool), so the block of unpooled maps, 3 of 4
    /// values zero, is never written and read back. Other pools: the default steps.
    public func lrpTermUnpooling(n: Int, _ Rp: UnsafePointer<Float>, argmax: UnsafePointer<Int32>,
                                 _ pool: PoolGeometry, _ z: UnsafePointer<Float>, epsilon: Float, _ g: ConvGeometry,
                                 prepared: UnsafePointer<Float>, _ a: UnsafePointer<Float>?, scale: Float,
                                 _ Rin: UnsafeMutablePointer<Float>, accumulate: Bool) throws {
        guard pool.windowsTile(g) else {
            try unpoolThenTerm(n: n, Rp, argmax: argmax, pool, z, epsilon: epsilon, g, prepared: prepared, a,
                           scale: scale, Rin, accumulate: accumulate)
            return
        }
        try check(ck_winograd_lrp_unpool(c(n), Rp, argmax, c(pool.outHeight), c(pool.outWidth), c(pool.strideH),
                               c(pool.strideW), z, epsilon, c(g.outChannels), c(g.height), c(g.width), prepared,
                               c(g.inChannels), a, scale, accumulate ? 1 : 0, Rin), "the Winograd backward")
    }

    /// s packed for the GEMM straight from R and z, shared by the terms (z^B has three), col2im and
    /// the products per map (ck_lrp_direct).
    public func lrpDirect(n: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float,
                          _ g: ConvGeometry, weights: [UnsafePointer<Float>], inputs: [UnsafePointer<Float>?],
                          scale: Float, _ Rin: UnsafeMutablePointer<Float>, accumulate: Bool) throws {
        precondition(weights.count == inputs.count, "one input per weight")
        if g.groups > 1 {
            return try composedLrpDirect(n: n, R, z, epsilon: epsilon, g, weights: weights, inputs: inputs,
                                         scale: scale, Rin, accumulate: accumulate)
        }
        let ws: [UnsafePointer<Float>?] = weights.map { Optional($0) }
        try check(ck_lrp_direct(c(n), R, z, epsilon, c(g.outChannels), c(g.outHeight), c(g.outWidth), c(weights.count), ws,
                      inputs, scale, c(g.inChannels), c(g.height), c(g.width), c(g.kernelH), c(g.kernelW),
                      c(g.strideH), c(g.strideW), c(g.padH), c(g.padW), accumulate ? 1 : 0, Rin), "the direct backward")
    }

    public func lrpTerm(n: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float, _ g: ConvGeometry,
                        prepared: UnsafePointer<Float>, _ a: UnsafePointer<Float>?, scale: Float,
                        _ Rin: UnsafeMutablePointer<Float>, accumulate: Bool) throws {
        try check(ck_winograd_lrp(c(n), R, z, epsilon, c(g.outChannels), c(g.height), c(g.width), prepared, c(g.inChannels),
                        a, scale, accumulate ? 1 : 0, Rin), "the Winograd backward")
    }

    /// The instruction set the C kernels use on this thread: "avx512", "avx2" or "portable".
    public static var activeISA: String { String(cString: ck_isa_name(ck_isa_active())) }
    /// Whether the C kernels were compiled with OpenMP (else they use libdispatch).
    public static var usesOpenMP: Bool { ck_openmp_enabled() != 0 }
    /// Worker threads of the C kernels.
    public static var threads: Int {
        get { Int(ck_get_num_threads()) }
        set { ck_set_num_threads(Int32(newValue)) }
    }

    public func convForward(_ x: UnsafePointer<Float>, _ g: ConvGeometry, weight: UnsafePointer<Float>,
                            bias: UnsafePointer<Float>?, _ y: UnsafeMutablePointer<Float>) throws {
        if g.groups > 1 {
            return try check(ck_grouped_conv_forward(x, ck(g), weight, bias, y), "the grouped convolution")
        }
        try check(ck_conv2d_forward(x, c(g.inChannels), c(g.height), c(g.width), weight, bias, c(g.outChannels),
                          c(g.kernelH), c(g.kernelW), c(g.strideH), c(g.strideW), c(g.padH), c(g.padW), y), "the forward convolution")
    }

    /// Every convolution's forward weight, packed for the micro-kernels (the same packing on every
    /// ISA). Packing per call was up to a third of the forward of a 512-channel layer on 16 x 16.
    public func forwardFormCount(_ g: ConvGeometry) -> Int? {
        // A grouped layer runs unpacked.
        guard g.groups == 1 else { return nil }
        let count = ck_conv_weights_size(c(g.outChannels), c(g.inChannels), c(g.kernelH), c(g.kernelW))
        return count > 0 ? count : nil
    }

    public func writeForwardForm(weight: UnsafePointer<Float>, _ g: ConvGeometry,
                                 into packed: UnsafeMutablePointer<Float>) {
        ck_conv_weights(weight, c(g.outChannels), c(g.inChannels), c(g.kernelH), c(g.kernelW), packed)
    }

    public func convForward(_ x: UnsafePointer<Float>, _ g: ConvGeometry, prepared: UnsafePointer<Float>,
                            bias: UnsafePointer<Float>?, _ y: UnsafeMutablePointer<Float>) throws {
        try check(ck_conv2d_forward_packed(x, c(g.inChannels), c(g.height), c(g.width), prepared, bias, c(g.outChannels),
                                 c(g.kernelH), c(g.kernelW), c(g.strideH), c(g.strideW), c(g.padH), c(g.padW), y), "the forward convolution")
    }

    public func convBackward(n: Int, _ s: UnsafePointer<Float>, _ g: ConvGeometry, weight: UnsafePointer<Float>,
                             _ cOut: UnsafeMutablePointer<Float>) throws {
        if g.groups > 1 {
            return try check(ck_grouped_conv_backward(c(n), s, ck(g), weight, cOut), "the grouped convolution backward")
        }
        try check(ck_conv2d_backward(c(n), s, c(g.outChannels), c(g.outHeight), c(g.outWidth), weight, c(g.inChannels),
                           c(g.height), c(g.width), c(g.kernelH), c(g.kernelW), c(g.strideH), c(g.strideW),
                           c(g.padH), c(g.padW), cOut), "the convolution backward")
    }

    public func lrpDivide(n: Int, count: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float,
                          _ s: UnsafeMutablePointer<Float>) {
        ck_lrp_divide(c(n), count, R, z, epsilon, s)
    }

    public func lrpProduct(n: Int, count: Int, _ a: UnsafePointer<Float>?, _ cIn: UnsafePointer<Float>, scale: Float,
                           _ R: UnsafeMutablePointer<Float>, accumulate: Bool) {
        ck_lrp_product(c(n), count, a, cIn, scale, R, accumulate ? 1 : 0)
    }

    public func lrpShares(n: Int, count: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float,
                          inputs: [UnsafePointer<Float>], outputs: [UnsafeMutablePointer<Float>], accumulate: [Bool]) {
        precondition(inputs.count == outputs.count && outputs.count == accumulate.count)
        let a: [UnsafePointer<Float>?] = inputs
        let o: [UnsafeMutablePointer<Float>?] = outputs
        ck_lrp_shares(c(n), count, R, z, epsilon, c(inputs.count), a, o, accumulate.map { $0 ? 1 : 0 })
    }

    public func clamp(count: Int, _ x: UnsafePointer<Float>, positive: Bool, _ y: UnsafeMutablePointer<Float>) {
        ck_clamp(count, x, positive ? 1 : -1, y)
    }

    public func maxPoolForward(_ x: UnsafePointer<Float>, _ g: PoolGeometry, _ y: UnsafeMutablePointer<Float>,
                               argmax: UnsafeMutablePointer<Int32>) {
        ck_maxpool_forward(x, c(g.channels), c(g.height), c(g.width), c(g.kernelH), c(g.kernelW), c(g.strideH),
                           c(g.strideW), c(g.padH), c(g.padW), y, argmax)
    }

    public func maxPoolBackward(n: Int, _ R: UnsafePointer<Float>, _ g: PoolGeometry, argmax: UnsafePointer<Int32>,
                                _ Rin: UnsafeMutablePointer<Float>) {
        ck_maxpool_backward(c(n), R, c(g.channels), c(g.outHeight), c(g.outWidth), argmax, c(g.height), c(g.width), Rin)
    }

    public func avgPoolForward(_ x: UnsafePointer<Float>, _ g: PoolGeometry, _ y: UnsafeMutablePointer<Float>) {
        ck_avgpool_forward(x, c(g.channels), c(g.height), c(g.width), c(g.kernelH), c(g.kernelW), c(g.strideH),
                           c(g.strideW), c(g.padH), c(g.padW), y)
    }

    public func avgPoolBackward(n: Int, _ s: UnsafePointer<Float>, _ g: PoolGeometry, _ cOut: UnsafeMutablePointer<Float>) {
        ck_avgpool_backward(c(n), s, c(g.channels), c(g.outHeight), c(g.outWidth), c(g.height), c(g.width),
                            c(g.kernelH), c(g.kernelW), c(g.strideH), c(g.strideW), c(g.padH), c(g.padW), cOut)
    }

    public func adaptiveAvgPoolForward(_ x: UnsafePointer<Float>, _ g: PoolGeometry, _ y: UnsafeMutablePointer<Float>) {
        ck_adaptive_avgpool_forward(x, c(g.channels), c(g.height), c(g.width), c(g.outHeight), c(g.outWidth), y)
    }

    public func adaptiveAvgPoolBackward(n: Int, _ s: UnsafePointer<Float>, _ g: PoolGeometry,
                                        _ cOut: UnsafeMutablePointer<Float>) {
        ck_adaptive_avgpool_backward(c(n), s, c(g.channels), c(g.outHeight), c(g.outWidth), c(g.height), c(g.width), cOut)
    }

    public func cellsLoad(channels: Int, map: (Int, Int), from: CellLayout, _ src: UnsafePointer<Float>,
                          to: CellLayout, factor: UnsafePointer<Float>?, _ dst: UnsafeMutablePointer<Float>) {
        from.withC { s in to.withC { d in ck_cells_load(c(channels), c(map.0), c(map.1), s, src, d, factor, dst) } }
    }

    public func cellsScale(channels: Int, map: (Int, Int), _ layout: CellLayout, _ o: UnsafePointer<Float>,
                           _ z: UnsafePointer<Float>, epsilon: Float, scale: Float, _ v: UnsafeMutablePointer<Float>,
                           accumulate: Bool) {
        layout.withC { l in
            ck_cells_scale(c(channels), c(map.0), c(map.1), l, o, z, epsilon, scale, accumulate ? 1 : 0, v)
        }
    }

    public func cellsUnpool(_ pool: PoolGeometry, argmax: UnsafePointer<Int32>, from: CellLayout,
                            _ pre: UnsafePointer<Float>, to: CellLayout, _ post: UnsafeMutablePointer<Float>) {
        from.withC { s in
            to.withC { d in
                ck_cells_unpool(c(pool.channels), c(pool.height), c(pool.width), c(pool.outHeight), c(pool.outWidth),
                                argmax, s, pre, d, post)
            }
        }
    }

    public func cellsContract(channels: Int, map: (Int, Int), _ layout: CellLayout, _ v: UnsafePointer<Float>,
                              n: Int, _ R: UnsafePointer<Float>, _ A: UnsafeMutablePointer<Float>, lda: Int) throws {
        try layout.withC { l in try check(ck_cells_contract(c(channels), c(map.0), c(map.1), l, v, c(n), R, A, lda), "the patch-side contraction") }
    }

    public func cellsPackedCount(channels: Int, _ layout: CellLayout) -> Int {
        layout.withC { l in Int(ck_cells_lanes_size(c(channels), l)) }
    }

    public func cellsPack(channels: Int, map: (Int, Int), _ layout: CellLayout, _ v: UnsafePointer<Float>,
                          _ packed: UnsafeMutablePointer<Float>) {
        layout.withC { l in ck_cells_lanes_pack(c(channels), c(map.0), c(map.1), l, v, packed) }
    }

    public func cellsContract(channels: Int, map: (Int, Int), _ layout: CellLayout, packed: UnsafePointer<Float>,
                              n: Int, _ R: UnsafePointer<Float>, _ A: UnsafeMutablePointer<Float>, lda: Int) throws {
        layout.withC { l in
            ck_cells_contract_lanes(c(channels), c(map.0), c(map.1), l, packed, c(n), R, A, lda)
        }
    }

    public func patchPool(n: Int, _ R: UnsafePointer<Float>, _ shape: Shape3, patch: Int,
                          _ out: UnsafeMutablePointer<Float>) {
        ck_patch_pool(c(n), R, c(shape.channels), c(shape.height), c(shape.width), c(patch), out)
    }

    public func pairProduct(p: Int, q: Int, h: Int, _ A: UnsafePointer<Float>, _ B: UnsafePointer<Float>,
                            _ R: UnsafeMutablePointer<Float>) throws {
        try check(ck_pair_product(c(p), c(q), c(h), A, B, R), "the pair product")
    }

    public func copyBox(n: Int, _ src: UnsafePointer<Float>, _ srcShape: Shape3, at srcAt: Position3,
                        _ dst: UnsafeMutablePointer<Float>, _ dstShape: Shape3, at dstAt: Position3, box: Shape3,
                        accumulate: Bool) {
        ck_copy_box(c(n), src, ck(srcShape), ck(srcAt), dst, ck(dstShape), ck(dstAt), ck(box), accumulate ? 1 : 0)
    }

    public func extremumForward(_ x: [UnsafePointer<Float>], count: Int, maximum: Bool,
                                _ y: UnsafeMutablePointer<Float>, winner: UnsafeMutablePointer<Int32>) {
        let xs: [UnsafePointer<Float>?] = x
        ck_extremum_forward(c(x.count), xs, count, maximum ? 1 : 0, y, winner)
    }

    public func extremumBackward(n: Int, count: Int, _ R: UnsafePointer<Float>, winner: UnsafePointer<Int32>,
                                 input j: Int, _ Rin: UnsafeMutablePointer<Float>) {
        ck_extremum_backward(c(n), count, R, winner, c(j), Rin)
    }

    public func reduceForward(_ x: UnsafePointer<Float>, _ s: Shape3, axes: Axes3, scale: Float,
                              _ y: UnsafeMutablePointer<Float>) {
        ck_reduce_forward(x, ck(s), c(axes.rawValue), scale, y)
    }

    public func reduceBackward(n: Int, _ S: UnsafePointer<Float>, _ a: UnsafePointer<Float>, _ s: Shape3, axes: Axes3,
                               scale: Float, _ Rin: UnsafeMutablePointer<Float>) {
        ck_reduce_backward(c(n), S, a, ck(s), c(axes.rawValue), scale, Rin)
    }

    public func layerNormForward(_ x: UnsafePointer<Float>, _ s: Shape3, _ ln: LayerNorm,
                                 _ y: UnsafeMutablePointer<Float>, inverseSigma: UnsafeMutablePointer<Float>) {
        ck_layernorm_forward(x, c(s.channels), c(s.height * s.width), ln.gamma, ln.beta, ln.epsilon, y, inverseSigma)
    }

    public func layerNormBackward(n: Int, _ S: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ s: Shape3,
                                  gamma: [Float], inverseSigma: UnsafePointer<Float>, exact: Bool,
                                  _ Rin: UnsafeMutablePointer<Float>) {
        ck_layernorm_backward(c(n), S, x, c(s.channels), c(s.height * s.width), gamma, inverseSigma, exact ? 1 : 0, Rin)
    }

    public func layerNormTransposed(n: Int, _ w: UnsafeMutablePointer<Float>, _ s: Shape3, gamma: [Float],
                                    inverseSigma: UnsafePointer<Float>) {
        ck_layernorm_transposed(c(n), w, c(s.channels), c(s.height * s.width), gamma, inverseSigma)
    }

    public func geluForward(_ x: UnsafePointer<Float>, count: Int, _ y: UnsafeMutablePointer<Float>) {
        ck_gelu_forward(count, x, y)
    }

    public func geluInputTimesSlope(_ x: UnsafePointer<Float>, count: Int, _ out: UnsafeMutablePointer<Float>) {
        ck_gelu_input_slope(count, x, out)
    }

    public func attentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, _ s: Shape3,
                                 heads: Int, _ o: UnsafeMutablePointer<Float>, weights A: UnsafeMutablePointer<Float>) throws {
        try check(ck_attention_forward(q, k, v, c(s.channels), c(s.width), c(heads), o, A), "attention forward")
    }

    public func attentionValueBackward(n: Int, _ S: UnsafePointer<Float>, v: UnsafePointer<Float>, _ s: Shape3,
                                       heads: Int, weights A: UnsafePointer<Float>, _ Rv: UnsafeMutablePointer<Float>) {
        ck_attention_value_backward(c(n), S, v, c(s.channels), c(s.width), c(heads), A, Rv)
    }

    public func attentionScoreBackward(n: Int, _ G: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                                       v: UnsafePointer<Float>, _ s: Shape3, heads: Int, weights A: UnsafePointer<Float>,
                                       _ Rq: UnsafeMutablePointer<Float>, _ Rk: UnsafeMutablePointer<Float>) throws {
        try check(ck_attention_score_backward(c(n), G, q, k, v, c(s.channels), c(s.width), c(heads), A, Rq, Rk),
                  "attention score backward")
    }

    private func ck(_ g: ConvGeometry) -> ck_conv_geometry {
        ck_conv_geometry(C: c(g.inChannels), H: c(g.height), W: c(g.width), K: c(g.outChannels), kh: c(g.kernelH),
                         kw: c(g.kernelW), sh: c(g.strideH), sw: c(g.strideW), ph: c(g.padH), pw: c(g.padW),
                         groups: c(g.groups))
    }
    private func ck(_ s: Shape3) -> ck_shape3 { ck_shape3(C: c(s.channels), H: c(s.height), W: c(s.width)) }
    private func ck(_ p: Position3) -> ck_at3 { ck_at3(c: c(p.channel), h: c(p.row), w: c(p.column)) }

    @inline(__always) private func c(_ v: Int) -> Int32 { Int32(truncatingIfNeeded: v) }

    /// A kernel's status (ckernels.h): CK_ERROR_MEMORY when an allocation it needed failed; its
    /// outputs are then undefined and the explanation stops with the error.
    private func check(_ status: Int32, _ kernel: String) throws {
        if status != 0 { throw BiLRPError.outOfMemory("\(kernel) could not allocate its working memory") }
    }
}
