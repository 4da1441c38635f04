import Foundation

// MARK: - Mixed-mode explanations: the lower layers from the patch side
//
// The factors are A^T = Q B_1 B_2 ... B_L R_L (P x h): R_L the h output relevance vectors, B_l the
// LRP backward of layer l (linear in the relevance once x is fixed), Q the patch pooling (sum over
// channels and a patch's pixels). The backward pass brackets it from the right: h maps through
// every layer at full resolution. Any bracketing gives the same matrix, and from the left Q B_1
// ... B_k is P vectors, one per patch, propagated up through the transposed steps
//     v <- sum_passes scale / stab(z) * sum_terms conv_t(a_t * v)     (a convolution)
//     v <- v at the winner of each window                             (a max-pool)
// that stay zero away from their patch: a 3 x 3 convolution grows the support by a pixel a side,
// a 2 x 2 pool halves it. VGG-16 at 128 x 128, 8 x 8 patches, h = 100: through conv3_3 the patch
// side is 98 GFLOP of forward convolutions, where the backward side is 785 GFLOP (direct count)
// for the same layers. The two sides meet at layer k, where A[p, m] is the dot product of patch
// p's vector with map m's relevance there. The split is chosen per input size by a cost model
// (`patchSidePlan`); results differ from the plain backward by rounding only.

/// One chunk of grid rows through the patch side: its first patch, the cell layout at the meeting
/// layer and the vectors there (C channels of mosaic), and the patches' supports there.
struct PatchSideChunk {
    var first: Int
    var layout: CellLayout
    var v: Buffer
    var supports: PatchSupports
}

/// The patch side's vectors of the whole grid in one layout whose cells sit at unit steps along
/// each grid row, packed for `Kernels.cellsContract(packed:)`.
struct PackedPatchSide {
    var layout: CellLayout
    var packed: Buffer
}

/// The per-patch supports (rectangles in map coordinates, clipped to the map) as the patch side
/// walks up the layers, and the cell layouts that hold them.
struct PatchSupports {
    var y0: [Int], y1: [Int], x0: [Int], x1: [Int]
    var gridColumns: Int

    init(grid: PatchGrid, rows: Range<Int>) {
        let ps = rows.flatMap { r in (0..<grid.columns).map { grid.rectangle(r * grid.columns + $0) } }
        y0 = ps.map(\.y0); y1 = ps.map(\.y1); x0 = ps.map(\.x0); x1 = ps.map(\.x1)
        gridColumns = grid.columns
    }

    var count: Int { y0.count }

    /// Cells that hold the supports with a zero ring of (ry, rx) pixels.
    func layout(ring ry: Int = 0, _ rx: Int = 0) -> CellLayout {
        let h = max(1, (0..<count).map { y1[$0] - y0[$0] }.max() ?? 1)
        let w = max(1, (0..<count).map { x1[$0] - x0[$0] }.max() ?? 1)
        return CellLayout(gridColumns: gridColumns, cellHeight: h + 2 * ry, cellWidth: w + 2 * rx,
                          originY: y0.map { Int32($0 - ry) }, originX: x0.map { Int32($0 - rx) })
    }

    /// After a stride-1 convolution with padding (ry, rx) on an (H, W) map.
    mutating func grow(_ ry: Int, _ rx: Int, height: Int, width: Int) {
        for p in 0..<count {
            y0[p] = max(0, y0[p] - ry); y1[p] = min(height, y1[p] + ry)
            x0[p] = max(0, x0[p] - rx); x1[p] = min(width, x1[p] + rx)
        }
    }

    /// After a pool: the output positions whose window meets the support.
    mutating func pool(_ g: PoolGeometry) {
        func lo(_ a: Int, _ k: Int, _ s: Int, _ pad: Int) -> Int {
            let t = a + pad - k + 1
            return max(0, t <= 0 ? 0 : (t + s - 1) / s)
        }
        for p in 0..<count {
            let ny0 = lo(y0[p], g.kernelH, g.strideH, g.padH), ny1 = min(g.outHeight, (y1[p] - 1 + g.padH) / g.strideH + 1)
            let nx0 = lo(x0[p], g.kernelW, g.strideW, g.padW), nx1 = min(g.outWidth, (x1[p] - 1 + g.padW) / g.strideW + 1)
            y0[p] = ny0; y1[p] = max(ny0, ny1); x0[p] = nx0; x1[p] = max(nx0, nx1)
        }
    }
}

extension Explainer {
    /// The layers the patch side can take: from the input, ungrouped stride-1 convolutions with odd
    /// kernels and "same" padding, ReLUs and max-pools. Returns how many.
    func patchSideReach(_ plan: ExecutionPlan) -> Int {
        var k = 0
        for l in plan.nodes.prefix(plan.chainPrefix).map(\.op) {
            switch l {
            case let .conv(c):
                guard !c.isLinear, c.groups == 1, c.strideH == 1, c.strideW == 1, c.kernelH % 2 == 1, c.kernelW % 2 == 1,
                      c.padH == c.kernelH / 2, c.padW == c.kernelW / 2 else { return k }
            case .relu, .maxPool: break
            default: return k
            }
            k += 1
        }
        return k
    }

    /// Patches per chunk of the patch side (whole rows of the grid): bounds its memory. VGG-16 at
    /// 128 x 128: chunks of 256 patches peaked at 938 MB, of 64 at 734 MB, in the same time (the
    /// mosaic of 64 cells of 14 x 14 is still 12 544 pixels for the convolution's GEMM).
    static let patchSideChunk = 64

    /// How many of the first layers run on the patch side for this input, h and patch size: the
    /// backend's `patchSideLayers` when set, else the k of least estimated cost, in multiply-adds
    /// weighted by what was measured on VGG-16 (2 threads): a backward layer h times its direct
    /// count, halved where it runs Winograd (a quarter of the multiplications at about half the
    /// direct kernel's rate), or times twice its relevance density where that is low enough for
    /// the sparse path (density estimated from the activations: relevance is zero where they
    /// are); a patch-side layer its forward convolution over the mosaic of cells, halved with
    /// Winograd, times 1.4 (small cells and the mosaic's rings make it slower per unit than the
    /// backward; calibrated on conv3_3, which measured a tie at 128 x 128 and faster from the
    /// patch side at 224 x 224: 5.15 against 5.29 s per pair, medians of 4, 947 against 1031 MB);
    /// the meeting point P h C times the cell area, four times (its gathered rows).
    func patchSidePlan(_ trace: Trace, patch: Int, outputs h: Int) -> Int {
        let plan = trace.plan
        let all = plan.nodes.map(\.op)
        let reach = patchSideReach(plan)
        if let forced = kernels.patchSideLayers { return min(max(0, forced), reach) }
        guard reach > 0 else { return 0 }
        let grid = PatchGrid(height: trace.inputShape.height, width: trace.inputShape.width, patch: patch)
        var sup = PatchSupports(grid: grid, rows: 0..<grid.rows)
        var backwardCost = [Double](repeating: 0, count: all.count + 1)
        var sideCost = [Double](repeating: 0, count: reach + 1)
        var meetCost = [Double](repeating: 0, count: reach + 1)
        for l in stride(from: all.count - 1, through: 0, by: -1) {
            var cost = 0.0
            if case let .conv(c) = all[l] {
                let g = c.geometry(trace.shapes[l])
                let terms = Double(c.termCount)
                cost = Double(h) * terms * Double(g.multiplyAdds)
                if c.sparseBackward, let d = relevanceDensity(trace, plan, below: l),
                   d < sparseThreshold(g, winograd: c.fusedBackward) {
                    cost *= 2 * d
                } else if c.fusedBackward {
                    cost /= 2
                }
            }
            backwardCost[l] = backwardCost[l + 1] + cost
        }
        func meet(_ channels: Int) -> Double {
            let cells = sup.layout()
            return 4 * Double(h) * Double(channels) * Double(cells.cellHeight * cells.cellWidth * sup.count)
        }
        for l in 0..<reach {
            let s = trace.shapes[l]
            meetCost[l] = meet(s.channels)
            var cost = 0.0
            switch all[l] {
            case let .conv(c):
                let cells = sup.layout(ring: c.padH, c.padW)
                let terms = Double(c.termCount)
                let winograd = c.fusedBackward && c.kernelH == 3 && c.kernelW == 3 && c.outChannels >= 16
                    && c.inChannels >= 16
                cost = 1.4 * terms * Double(cells.count * cells.cellHeight * cells.cellWidth * c.inChannels
                    * c.outChannels * c.kernelH * c.kernelW) / (winograd ? 2 : 1)
                sup.grow(c.padH, c.padW, height: s.height, width: s.width)
            case let .maxPool(p, _):
                sup.pool(PoolGeometry(channels: s.channels, height: s.height, width: s.width, pool: p))
            default: break
            }
            sideCost[l + 1] = sideCost[l] + cost
        }
        meetCost[reach] = meet(trace.shapes[reach].channels)
        var best = 0, bestCost = backwardCost[0]
        for k in 1...reach where sideCost[k] + meetCost[k] + backwardCost[k] < bestCost {
            best = k; bestCost = sideCost[k] + meetCost[k] + backwardCost[k]
        }
        return best
    }

    /// The share of conv layer l's outputs that can carry relevance: those whose activation,
    /// after the ReLU and a max-pool (only winners), is non-zero, read from the input of the next
    /// weighted layer. nil when the layers after l are not ReLU / max-pool / convolution.
    func relevanceDensity(_ trace: Trace, _ plan: ExecutionPlan, below l: Int) -> Double? {
        guard case let .conv(c) = plan.nodes[l].op else { return nil }
        let out = c.geometry(trace.shapes[l]).outCount
        var k = l + 1
        scan: while k < plan.nodes.count {
            // Only along a chain: node k reads node k - 1's output, which nothing else reads.
            let v = plan.nodes[k - 1].output
            guard plan.nodes[k].inputs == [v], plan.readers[v] == 1 else { return nil }
            switch plan.nodes[k].op {
            case .relu, .maxPool: k += 1
            case .conv: break scan
            default: return nil
            }
        }
        guard k < plan.nodes.count else { return nil }
        let a = trace.inputs[k], count = trace.shapes[k].count
        var nonZero = 0
        for i in 0..<count where a.pointer[i] != 0 { nonZero += 1 }
        return Double(nonZero) / Double(out)
    }

    /// The patch side through the first k layers, in chunks of grid rows: per chunk its first
    /// patch, the cell layout at layer k's input and the vectors there (C_k channels of mosaic).
    func patchSide(_ trace: Trace, _ grid: PatchGrid, layers k: Int, profile: ExplainerProfile?,
                   pool: BufferPool) throws -> [PatchSideChunk] {
        let all = trace.plan.nodes.map(\.op)
        let rowsPerChunk = max(1, Self.patchSideChunk / max(1, grid.columns))
        let chunks = (grid.rows + rowsPerChunk - 1) / rowsPerChunk
        let rowsEach = (grid.rows + chunks - 1) / chunks
        var out: [PatchSideChunk] = []
        for r0 in stride(from: 0, to: grid.rows, by: rowsEach) {
            let rows = r0..<min(grid.rows, r0 + rowsEach)
            var sup = PatchSupports(grid: grid, rows: rows)
            // Q: ones over the patch's pixels in every input channel.
            var layout = sup.layout()
            let s0 = trace.shapes[0]
            var v = Buffer(count: layout.mosaicCount(channels: s0.channels))
            v.pointer.initialize(repeating: 0, count: v.count)
            let plane = layout.mosaicHeight * layout.mosaicWidth
            for c in 0..<s0.channels {
                for p in 0..<sup.count {
                    for i in 0..<(sup.y1[p] - sup.y0[p]) {
                        for j in 0..<(sup.x1[p] - sup.x0[p]) { v.pointer[c * plane + layout.index(p, i, j)] = 1 }
                    }
                }
            }
            for l in 0..<k {
                let t0 = DispatchTime.now().uptimeNanoseconds
                let s = trace.shapes[l]
                switch all[l] {
                case let .conv(c):
                    let cells = sup.layout(ring: c.padH, c.padW)
                    let gm = ConvGeometry(inChannels: s.channels, height: cells.mosaicHeight, width: cells.mosaicWidth,
                                          outChannels: c.outChannels, kernelH: c.kernelH, kernelW: c.kernelW,
                                          padH: c.padH, padW: c.padW)
                    let u = pool.take(gm.inCount), o = pool.take(gm.outCount), next = pool.take(gm.outCount)
                    let tmp = c.passes.contains { $0.terms.count > 1 } ? pool.take(gm.outCount) : nil
                    for (pi, pass) in c.passes.enumerated() {
                        for (t, term) in pass.terms.enumerated() {
                            let factor: UnsafePointer<Float>? = term.input == .ones ? nil
                                : term.input == .identity ? trace.inputs[l].const
                                : trace.modifiedInputs[l][term.input]!.const
                            kernels.cellsLoad(channels: s.channels, map: (s.height, s.width), from: layout, v.const,
                                              to: cells, factor: factor, u.pointer)
                            let y = t == 0 ? o.pointer : tmp!.pointer
                            if let w = try c.winogradForward(term.weight, kernels) {
                                try kernels.convForward(u.const, gm, winograd: w.const, y)
                            } else {
                                try c.forward(u.const, gm, term.weight, bias: nil, y, kernels)
                            }
                            if t > 0 { for i in 0..<gm.outCount { o.pointer[i] += tmp!.pointer[i] } }
                        }
                        let g = c.geometry(s)
                        kernels.cellsScale(channels: c.outChannels, map: (g.outHeight, g.outWidth), cells, o.const,
                                           trace.denominators[l][pi].const, epsilon: pass.epsilon, scale: pass.scale,
                                           next.pointer, accumulate: pi > 0)
                    }
                    pool.give(u); pool.give(o); if let tmp { pool.give(tmp) }
                    pool.give(v)
                    v = next
                    layout = cells
                    sup.grow(c.padH, c.padW, height: s.height, width: s.width)
                case let .maxPool(p, _):
                    let g = PoolGeometry(channels: s.channels, height: s.height, width: s.width, pool: p)
                    sup.pool(g)
                    let post = sup.layout()
                    let next = pool.take(post.mosaicCount(channels: s.channels))
                    kernels.cellsUnpool(g, argmax: UnsafePointer(trace.argmax[l]!.pointer), from: layout, v.const,
                                        to: post, next.pointer)
                    pool.give(v)
                    v = next
                    layout = post
                case .relu:
                    break
                default:
                    preconditionFailure("the patch side reaches only convolutions, ReLUs and max-pools")
                }
                if let profile {
                    profile.layers[l].seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
                }
            }
            // A buffer of its own: the pool's may be larger than the layout needs, and it outlives the blocks.
            let kept = Buffer(count: layout.mosaicCount(channels: trace.shapes[k].channels))
            kept.pointer.update(from: v.const, count: kept.count)
            pool.give(v)
            out.append(PatchSideChunk(first: rows.lowerBound * grid.columns, layout: layout, v: kept, supports: sup))
        }
        return out
    }
}

extension Explainer {
    /// The chunks' vectors moved into one layout for the whole grid whose cells sit at unit steps
    /// along each grid row (in a row the same origin row, origins one column apart) and packed for
    /// `cellsContract(packed:)`: one contraction per block of maps for every patch, 16 patches in
    /// the lanes of a vector, where `cellsContract` reduces each cell's sums across lanes (at
    /// VGG-16's pool3 with 8 x 8 patches, 7 of 16 lanes a cell row). The cells grow to cover every
    /// patch's support at its grid column (a border patch's support is clipped to the map, so its
    /// cell no longer starts at its own column): the values dropped are only those outside the
    /// supports, zero up to the patch side's rounding. Nil when the backend has no packed path, or
    /// when the grid does not step with the map (patches of more or less than one pixel at the
    /// meeting layer), where such cells would be much larger than the supports.
    func packPatchSide(_ chunks: [PatchSideChunk], _ grid: PatchGrid, channels C: Int, map: (Int, Int))
        -> PackedPatchSide? {
        let gc = grid.columns
        guard !chunks.isEmpty, chunks.allSatisfy({ $0.first % gc == 0 && $0.supports.count % gc == 0 }) else {
            return nil
        }
        var rowOrigin = [Int](repeating: Int.max, count: grid.rows), rowEnd = [Int](repeating: Int.min, count: grid.rows)
        var x0 = Int.max, x1 = Int.min, supportH = 1, supportW = 1
        for chunk in chunks {
            let s = chunk.supports
            for i in 0..<s.count {
                let p = chunk.first + i, r = p / gc, q = p % gc
                rowOrigin[r] = min(rowOrigin[r], s.y0[i]); rowEnd[r] = max(rowEnd[r], s.y1[i])
                x0 = min(x0, s.x0[i] - q); x1 = max(x1, s.x1[i] - q)
                supportH = max(supportH, s.y1[i] - s.y0[i]); supportW = max(supportW, s.x1[i] - s.x0[i])
            }
        }
        guard rowOrigin.allSatisfy({ $0 != Int.max }) else { return nil }
        let cellH = max(1, zip(rowOrigin, rowEnd).map { $1 - $0 }.max()!), cellW = max(1, x1 - x0)
        guard cellH * cellW <= 2 * supportH * supportW else { return nil }
        func layout(_ patches: Range<Int>) -> CellLayout {
            CellLayout(gridColumns: gc, cellHeight: cellH, cellWidth: cellW,
                       originY: patches.map { Int32(rowOrigin[$0 / gc]) }, originX: patches.map { Int32($0 % gc + x0) })
        }
        let whole = layout(0..<grid.count)
        let total = kernels.cellsPackedCount(channels: C, whole)
        guard total > 0 else { return nil }
        let packed = Buffer(count: total)
        var offset = 0
        for chunk in chunks {
            let to = layout(chunk.first..<chunk.first + chunk.supports.count)
            let moved = Buffer(count: to.mosaicCount(channels: C))
            kernels.cellsLoad(channels: C, map: map, from: chunk.layout, chunk.v.const, to: to, factor: nil,
                              moved.pointer)
            kernels.cellsPack(channels: C, map: map, to, moved.const, packed.pointer + offset)
            offset += kernels.cellsPackedCount(channels: C, to)
        }
        precondition(offset == total, "packed chunks cover the grid")
        return PackedPatchSide(layout: whole, packed: packed)
    }
}
