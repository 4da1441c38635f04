import BiLRP

/// The arithmetic of `CKernelsBackend` in plain Swift loops: no SIMD, no threads, sums in the
/// order the formulas are written, accumulated in Double where a sum is long. Slow and obviously
/// correct; the tests compare every C kernel against it, and `bilrp explain --reference` runs a
/// whole explanation on it.
public struct ReferenceKernels: Kernels {
    public init() {}

    public func convForward(_ x: UnsafePointer<Float>, _ g: ConvGeometry, weight: UnsafePointer<Float>,
                            bias: UnsafePointer<Float>?, _ y: UnsafeMutablePointer<Float>) {
        let (Ho, Wo) = (g.outHeight, g.outWidth)
        let perIn = g.inChannels / g.groups, perOut = g.outChannels / g.groups
        for k in 0..<g.outChannels {
            let c0 = k / perOut * perIn  // the first input channel of k's group
            for oy in 0..<Ho {
                for ox in 0..<Wo {
                    var sum: Double = bias.map { Double($0[k]) } ?? 0
                    for c in 0..<perIn {
                        for i in 0..<g.kernelH {
                            let iy = oy * g.strideH - g.padH + i
                            if iy < 0 || iy >= g.height { continue }
                            for j in 0..<g.kernelW {
                                let ix = ox * g.strideW - g.padW + j
                                if ix < 0 || ix >= g.width { continue }
                                let w = weight[((k * perIn + c) * g.kernelH + i) * g.kernelW + j]
                                sum += Double(w) * Double(x[((c0 + c) * g.height + iy) * g.width + ix])
                            }
                        }
                    }
                    y[(k * Ho + oy) * Wo + ox] = Float(sum)
                }
            }
        }
    }

    /// The adjoint of `convForward`: every output position scatters s * w back to the inputs it read.
    public func convBackward(n: Int, _ s: UnsafePointer<Float>, _ g: ConvGeometry, weight: UnsafePointer<Float>,
                             _ c: UnsafeMutablePointer<Float>) {
        let (Ho, Wo) = (g.outHeight, g.outWidth)
        let perIn = g.inChannels / g.groups, perOut = g.outChannels / g.groups
        var acc = [Double](repeating: 0, count: g.inCount)
        for m in 0..<n {
            for i in acc.indices { acc[i] = 0 }
            let sm = s + m * g.outCount
            for k in 0..<g.outChannels {
                let c0 = k / perOut * perIn
                for oy in 0..<Ho {
                    for ox in 0..<Wo {
                        let v = Double(sm[(k * Ho + oy) * Wo + ox])
                        if v == 0 { continue }
                        for ch in 0..<perIn {
                            for i in 0..<g.kernelH {
                                let iy = oy * g.strideH - g.padH + i
                                if iy < 0 || iy >= g.height { continue }
                                for j in 0..<g.kernelW {
                                    let ix = ox * g.strideW - g.padW + j
                                    if ix < 0 || ix >= g.width { continue }
                                    let w = weight[((k * perIn + ch) * g.kernelH + i) * g.kernelW + j]
                                    acc[((c0 + ch) * g.height + iy) * g.width + ix] += v * Double(w)
                                }
                            }
                        }
                    }
                }
            }
            for i in 0..<g.inCount { c[m * g.inCount + i] = Float(acc[i]) }
        }
    }

    public func lrpDivide(n: Int, count: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float,
                          _ s: UnsafeMutablePointer<Float>) {
        for m in 0..<n {
            for i in 0..<count {
                let zi = z[i]
                let stabilized = zi + (zi >= 0 ? epsilon : -epsilon)
                s[m * count + i] = R[m * count + i] / stabilized
            }
        }
    }

    public func lrpProduct(n: Int, count: Int, _ a: UnsafePointer<Float>?, _ c: UnsafePointer<Float>, scale: Float,
                           _ R: UnsafeMutablePointer<Float>, accumulate: Bool) {
        for m in 0..<n {
            for i in 0..<count {
                let v = scale * (a?[i] ?? 1) * c[m * count + i]
                R[m * count + i] = accumulate ? R[m * count + i] + v : v
            }
        }
    }

    public func lrpShares(n: Int, count: Int, _ R: UnsafePointer<Float>, _ z: UnsafePointer<Float>, epsilon: Float,
                          inputs: [UnsafePointer<Float>], outputs: [UnsafeMutablePointer<Float>], accumulate: [Bool]) {
        for m in 0..<n {
            for i in 0..<count {
                let zi = z[i]
                let s = R[m * count + i] / (zi + (zi >= 0 ? epsilon : -epsilon))
                for (j, out) in outputs.enumerated() {
                    let v = inputs[j][i] * s
                    out[m * count + i] = accumulate[j] ? out[m * count + i] + v : v
                }
            }
        }
    }

    public func clamp(count: Int, _ x: UnsafePointer<Float>, positive: Bool, _ y: UnsafeMutablePointer<Float>) {
        for i in 0..<count { y[i] = positive ? max(x[i], 0) : min(x[i], 0) }
    }

    public func maxPoolForward(_ x: UnsafePointer<Float>, _ g: PoolGeometry, _ y: UnsafeMutablePointer<Float>,
                               argmax: UnsafeMutablePointer<Int32>) {
        for c in 0..<g.channels {
            for oy in 0..<g.outHeight {
                for ox in 0..<g.outWidth {
                    var best = -Float.infinity
                    var arg = -1
                    for i in 0..<g.kernelH {
                        let iy = oy * g.strideH - g.padH + i
                        if iy < 0 || iy >= g.height { continue }
                        for j in 0..<g.kernelW {
                            let ix = ox * g.strideW - g.padW + j
                            if ix < 0 || ix >= g.width { continue }
                            let v = x[(c * g.height + iy) * g.width + ix]
                            if arg < 0 || v > best || v.isNaN { best = v; arg = iy * g.width + ix }
                        }
                    }
                    let o = (c * g.outHeight + oy) * g.outWidth + ox
                    y[o] = best
                    argmax[o] = Int32(arg)
                }
            }
        }
    }

    public func maxPoolBackward(n: Int, _ R: UnsafePointer<Float>, _ g: PoolGeometry, argmax: UnsafePointer<Int32>,
                                _ Rin: UnsafeMutablePointer<Float>) {
        let plane = g.height * g.width, oplane = g.outHeight * g.outWidth
        Rin.initialize(repeating: 0, count: n * g.inCount)
        for m in 0..<n {
            for c in 0..<g.channels {
                for o in 0..<oplane {
                    let w = Int(argmax[c * oplane + o])
                    if w >= 0 { Rin[m * g.inCount + c * plane + w] += R[m * g.outCount + c * oplane + o] }
                }
            }
        }
    }

    /// Visits every (output, input) pair of a pooling window with the window's weight.
    private func windows(_ g: PoolGeometry, adaptive: Bool, _ body: (_ o: Int, _ i: Int, _ weight: Float) -> Void) {
        for c in 0..<g.channels {
            for oy in 0..<g.outHeight {
                for ox in 0..<g.outWidth {
                    let o = (c * g.outHeight + oy) * g.outWidth + ox
                    if adaptive {
                        let y0 = oy * g.height / g.outHeight, y1 = ((oy + 1) * g.height + g.outHeight - 1) / g.outHeight
                        let x0 = ox * g.width / g.outWidth, x1 = ((ox + 1) * g.width + g.outWidth - 1) / g.outWidth
                        let w = 1 / Float((y1 - y0) * (x1 - x0))
                        for iy in y0..<y1 { for ix in x0..<x1 { body(o, (c * g.height + iy) * g.width + ix, w) } }
                    } else {
                        let w = 1 / Float(g.kernelH * g.kernelW)
                        for i in 0..<g.kernelH {
                            let iy = oy * g.strideH - g.padH + i
                            if iy < 0 || iy >= g.height { continue }
                            for j in 0..<g.kernelW {
                                let ix = ox * g.strideW - g.padW + j
                                if ix < 0 || ix >= g.width { continue }
                                body(o, (c * g.height + iy) * g.width + ix, w)
                            }
                        }
                    }
                }
            }
        }
    }

    private func poolForward(_ x: UnsafePointer<Float>, _ g: PoolGeometry, adaptive: Bool, _ y: UnsafeMutablePointer<Float>) {
        var sums = [Double](repeating: 0, count: g.outCount)
        var weight = [Float](repeating: 0, count: g.outCount)
        windows(g, adaptive: adaptive) { o, i, w in sums[o] += Double(x[i]); weight[o] = w }
        for o in 0..<g.outCount { y[o] = Float(sums[o] * Double(weight[o])) }
    }

    private func poolBackward(n: Int, _ s: UnsafePointer<Float>, _ g: PoolGeometry, adaptive: Bool,
                              _ c: UnsafeMutablePointer<Float>) {
        c.initialize(repeating: 0, count: n * g.inCount)
        for m in 0..<n {
            windows(g, adaptive: adaptive) { o, i, w in c[m * g.inCount + i] += s[m * g.outCount + o] * w }
        }
    }

    public func avgPoolForward(_ x: UnsafePointer<Float>, _ g: PoolGeometry, _ y: UnsafeMutablePointer<Float>) {
        poolForward(x, g, adaptive: false, y)
    }

    public func avgPoolBackward(n: Int, _ s: UnsafePointer<Float>, _ g: PoolGeometry, _ c: UnsafeMutablePointer<Float>) {
        poolBackward(n: n, s, g, adaptive: false, c)
    }

    public func adaptiveAvgPoolForward(_ x: UnsafePointer<Float>, _ g: PoolGeometry, _ y: UnsafeMutablePointer<Float>) {
        poolForward(x, g, adaptive: true, y)
    }

    public func adaptiveAvgPoolBackward(n: Int, _ s: UnsafePointer<Float>, _ g: PoolGeometry,
                                        _ c: UnsafeMutablePointer<Float>) {
        poolBackward(n: n, s, g, adaptive: true, c)
    }

    public func patchPool(n: Int, _ R: UnsafePointer<Float>, _ shape: Shape3, patch: Int,
                          _ out: UnsafeMutablePointer<Float>) {
        let rows = (shape.height + patch - 1) / patch, cols = (shape.width + patch - 1) / patch
        for m in 0..<n {
            var acc = [Double](repeating: 0, count: rows * cols)
            for c in 0..<shape.channels {
                for y in 0..<shape.height {
                    for x in 0..<shape.width {
                        acc[(y / patch) * cols + x / patch] += Double(R[m * shape.count + (c * shape.height + y) * shape.width + x])
                    }
                }
            }
            for p in 0..<rows * cols { out[m * rows * cols + p] = Float(acc[p]) }
        }
    }

    // MARK: Graph ops: every value by its (c, y, x), written out.

    public func copyBox(n: Int, _ src: UnsafePointer<Float>, _ srcShape: Shape3, at srcAt: Position3,
                        _ dst: UnsafeMutablePointer<Float>, _ dstShape: Shape3, at dstAt: Position3, box: Shape3,
                        accumulate: Bool) {
        func index(_ s: Shape3, _ at: Position3, _ c: Int, _ y: Int, _ x: Int) -> Int {
            ((at.channel + c) * s.height + at.row + y) * s.width + at.column + x
        }
        for m in 0..<n {
            for c in 0..<box.channels {
                for y in 0..<box.height {
                    for x in 0..<box.width {
                        let v = src[m * srcShape.count + index(srcShape, srcAt, c, y, x)]
                        let o = m * dstShape.count + index(dstShape, dstAt, c, y, x)
                        dst[o] = accumulate ? dst[o] + v : v
                    }
                }
            }
        }
    }

    public func extremumForward(_ x: [UnsafePointer<Float>], count: Int, maximum: Bool,
                                _ y: UnsafeMutablePointer<Float>, winner: UnsafeMutablePointer<Int32>) {
        for i in 0..<count {
            var best = x[0][i], w = 0
            for j in 1..<x.count where !best.isNaN {
                let v = x[j][i]
                if v.isNaN || (maximum ? v > best : v < best) { best = v; w = j }
            }
            y[i] = best
            winner[i] = Int32(w)
        }
    }

    public func extremumBackward(n: Int, count: Int, _ R: UnsafePointer<Float>, winner: UnsafePointer<Int32>,
                                 input j: Int, _ Rin: UnsafeMutablePointer<Float>) {
        for m in 0..<n { for i in 0..<count { Rin[m * count + i] = Int(winner[i]) == j ? R[m * count + i] : 0 } }
    }

    /// The output index of input (c, y, x) under the reduction.
    private func reducedIndex(_ s: Shape3, _ axes: Axes3, _ c: Int, _ y: Int, _ x: Int) -> Int {
        let r = axes.reduce(s)
        let rc = axes.contains(.channels) ? 0 : c, ry = axes.contains(.height) ? 0 : y, rx = axes.contains(.width) ? 0 : x
        return (rc * r.height + ry) * r.width + rx
    }

    public func reduceForward(_ x: UnsafePointer<Float>, _ s: Shape3, axes: Axes3, scale: Float,
                              _ y: UnsafeMutablePointer<Float>) {
        var acc = [Double](repeating: 0, count: axes.reduce(s).count)
        for c in 0..<s.channels {
            for i in 0..<s.height {
                for j in 0..<s.width { acc[reducedIndex(s, axes, c, i, j)] += Double(x[(c * s.height + i) * s.width + j]) }
            }
        }
        for o in acc.indices { y[o] = Float(acc[o] * Double(scale)) }
    }

    public func reduceBackward(n: Int, _ S: UnsafePointer<Float>, _ a: UnsafePointer<Float>, _ s: Shape3, axes: Axes3,
                               scale: Float, _ Rin: UnsafeMutablePointer<Float>) {
        let r = axes.reduce(s).count
        for m in 0..<n {
            for c in 0..<s.channels {
                for i in 0..<s.height {
                    for j in 0..<s.width {
                        let k = (c * s.height + i) * s.width + j
                        Rin[m * s.count + k] = scale * a[k] * S[m * r + reducedIndex(s, axes, c, i, j)]
                    }
                }
            }
        }
    }

    // MARK: Patch side: each cell pixel by its map position, written out.

    public func cellsLoad(channels: Int, map: (Int, Int), from: CellLayout, _ src: UnsafePointer<Float>,
                          to: CellLayout, factor: UnsafePointer<Float>?, _ dst: UnsafeMutablePointer<Float>) {
        let (H, W) = map
        let splane = from.mosaicHeight * from.mosaicWidth, dplane = to.mosaicHeight * to.mosaicWidth
        for c in 0..<channels {
            for i in 0..<dplane { dst[c * dplane + i] = 0 }
            for p in 0..<to.count {
                for i in 0..<to.cellHeight {
                    for j in 0..<to.cellWidth {
                        let y = Int(to.originY[p]) + i, x = Int(to.originX[p]) + j
                        guard y >= 0, y < H, x >= 0, x < W else { continue }
                        let si = y - Int(from.originY[p]), sj = x - Int(from.originX[p])
                        guard si >= 0, si < from.cellHeight, sj >= 0, sj < from.cellWidth else { continue }
                        let f = factor.map { $0[(c * H + y) * W + x] } ?? 1
                        dst[c * dplane + to.index(p, i, j)] = src[c * splane + from.index(p, si, sj)] * f
                    }
                }
            }
        }
    }

    public func cellsScale(channels: Int, map: (Int, Int), _ layout: CellLayout, _ o: UnsafePointer<Float>,
                           _ z: UnsafePointer<Float>, epsilon: Float, scale: Float, _ v: UnsafeMutablePointer<Float>,
                           accumulate: Bool) {
        let (H, W) = map
        let plane = layout.mosaicHeight * layout.mosaicWidth
        if !accumulate { for i in 0..<channels * plane { v[i] = 0 } }
        for c in 0..<channels {
            for p in 0..<layout.count {
                for i in 0..<layout.cellHeight {
                    for j in 0..<layout.cellWidth {
                        let y = Int(layout.originY[p]) + i, x = Int(layout.originX[p]) + j
                        guard y >= 0, y < H, x >= 0, x < W else { continue }
                        let zz = z[(c * H + y) * W + x]
                        let k = c * plane + layout.index(p, i, j)
                        v[k] += o[k] / (zz + (zz >= 0 ? epsilon : -epsilon)) * scale
                    }
                }
            }
        }
    }

    public func cellsUnpool(_ pool: PoolGeometry, argmax: UnsafePointer<Int32>, from: CellLayout,
                            _ pre: UnsafePointer<Float>, to: CellLayout, _ post: UnsafeMutablePointer<Float>) {
        let splane = from.mosaicHeight * from.mosaicWidth, dplane = to.mosaicHeight * to.mosaicWidth
        for c in 0..<pool.channels {
            for i in 0..<dplane { post[c * dplane + i] = 0 }
            for p in 0..<to.count {
                for i in 0..<to.cellHeight {
                    for j in 0..<to.cellWidth {
                        let y = Int(to.originY[p]) + i, x = Int(to.originX[p]) + j
                        guard y >= 0, y < pool.outHeight, x >= 0, x < pool.outWidth else { continue }
                        let a = Int(argmax[(c * pool.outHeight + y) * pool.outWidth + x])
                        guard a >= 0 else { continue }
                        let si = a / pool.width - Int(from.originY[p]), sj = a % pool.width - Int(from.originX[p])
                        guard si >= 0, si < from.cellHeight, sj >= 0, sj < from.cellWidth else { continue }
                        post[c * dplane + to.index(p, i, j)] = pre[c * splane + from.index(p, si, sj)]
                    }
                }
            }
        }
    }

    public func cellsContract(channels: Int, map: (Int, Int), _ layout: CellLayout, _ v: UnsafePointer<Float>,
                              n: Int, _ R: UnsafePointer<Float>, _ A: UnsafeMutablePointer<Float>, lda: Int) {
        let (H, W) = map
        let plane = layout.mosaicHeight * layout.mosaicWidth
        for p in 0..<layout.count {
            for m in 0..<n {
                var sum: Double = 0
                for c in 0..<channels {
                    for i in 0..<layout.cellHeight {
                        for j in 0..<layout.cellWidth {
                            let y = Int(layout.originY[p]) + i, x = Int(layout.originX[p]) + j
                            guard y >= 0, y < H, x >= 0, x < W else { continue }
                            sum += Double(v[c * plane + layout.index(p, i, j)])
                                * Double(R[((m * channels + c) * H + y) * W + x])
                        }
                    }
                }
                A[p * lda + m] = Float(sum)
            }
        }
    }

    public func pairProduct(p: Int, q: Int, h: Int, _ A: UnsafePointer<Float>, _ B: UnsafePointer<Float>,
                            _ R: UnsafeMutablePointer<Float>) {
        for i in 0..<p {
            for j in 0..<q {
                var sum: Double = 0
                for m in 0..<h { sum += Double(A[i * h + m]) * Double(B[j * h + m]) }
                R[i * q + j] = Float(sum)
            }
        }
    }
}

extension ReferenceKernels {
    /// The twin of `ck_sgemm`: C(i, j) = [C(i, j) +] sum_k A[i rsa + k csa] B[k rsb + j csb].
    public static func gemm(
        m: Int, n: Int, k: Int, _ a: [Float], rsa: Int, csa: Int, _ b: [Float], rsb: Int, csb: Int,
        _ c: inout [Float], ldc: Int, accumulate: Bool
    ) {
        for i in 0..<m {
            for j in 0..<n {
                var sum: Double = 0
                for l in 0..<k { sum += Double(a[i * rsa + l * csa]) * Double(b[l * rsb + j * csb]) }
                c[i * ldc + j] = accumulate ? c[i * ldc + j] + Float(sum) : Float(sum)
            }
        }
    }
}

extension ReferenceKernels {
    /// torch.nn.Conv2d's forward with its own weight layout (out, in / groups, kh, kw), dilation and
    /// groups, written from torch's definition (the twin of the explainer's `Conv2d.spanWeight` and
    /// grouped geometry).
    public static func conv2d(_ x: [Float], _ s: Shape3, _ conv: Conv2d) -> [Float] {
        let Ho = (s.height + 2 * conv.padH - conv.spanH) / conv.strideH + 1
        let Wo = (s.width + 2 * conv.padW - conv.spanW) / conv.strideW + 1
        let perIn = conv.inChannels / conv.groups, perOut = conv.outChannels / conv.groups
        var y = [Float](repeating: 0, count: conv.outChannels * Ho * Wo)
        for k in 0..<conv.outChannels {
            let c0 = k / perOut * perIn
            for oy in 0..<Ho {
                for ox in 0..<Wo {
                    var sum = Double(conv.bias?[k] ?? 0)
                    for c in 0..<perIn {
                        for i in 0..<conv.kernelH {
                            let iy = oy * conv.strideH - conv.padH + i * conv.dilationH
                            guard iy >= 0, iy < s.height else { continue }
                            for j in 0..<conv.kernelW {
                                let ix = ox * conv.strideW - conv.padW + j * conv.dilationW
                                guard ix >= 0, ix < s.width else { continue }
                                let w = conv.weight[((k * perIn + c) * conv.kernelH + i) * conv.kernelW + j]
                                sum += Double(w) * Double(x[((c0 + c) * s.height + iy) * s.width + ix])
                            }
                        }
                    }
                    y[(k * Ho + oy) * Wo + ox] = Float(sum)
                }
            }
        }
        return y
    }
}
