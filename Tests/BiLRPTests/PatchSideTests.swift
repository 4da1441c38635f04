import BiLRP
import BiLRPReference
import CKernels
import Testing

/// A layout of `count` cells whose origins scatter around an (H, W) map, some partly off it.
func scatteredCells(count: Int, columns: Int, cell: (Int, Int), map: (Int, Int), seed: UInt64) -> CellLayout {
    let r = random(2 * count, seed: seed)
    let oy = (0..<count).map { Int32((Float(map.0 + cell.0) * (r[2 * $0] + 1) / 2).rounded(.down)) - Int32(cell.0) / 2 }
    let ox = (0..<count).map { Int32((Float(map.1 + cell.1) * (r[2 * $0 + 1] + 1) / 2).rounded(.down)) - Int32(cell.1) / 2 }
    return CellLayout(gridColumns: columns, cellHeight: cell.0, cellWidth: cell.1, originY: oy, originX: ox)
}

@Suite("Patch side: cell kernels against the reference, mixed-mode explanations", .serialized)
struct PatchSideTests {
    @Test("cells load (shifted and resized cells, factor and none) and scale (both accumulate modes)", arguments: isaPaths)
    func loadAndScale(isa: Int32) {
        withISA(isa) {
            let (C, H, W) = (5, 11, 9)
            let from = scatteredCells(count: 7, columns: 3, cell: (5, 4), map: (H, W), seed: 1)
            // The destination: the same cells grown by a ring of (1, 2), as before a 3 x 5 convolution.
            let to = CellLayout(gridColumns: 4, cellHeight: 7, cellWidth: 8, originY: from.originY.map { $0 - 1 },
                                originX: from.originX.map { $0 - 2 })
            let src = random(from.mosaicCount(channels: C), seed: 2)
            let factor = random(C * H * W, seed: 3)
            for f in [factor, nil] {
                let (a, b) = both(to.mosaicCount(channels: C)) { k, out in
                    withOptionalPointers([f]) { fp in
                        k.cellsLoad(channels: C, map: (H, W), from: from, src, to: to, factor: fp[0], out)
                    }
                }
                #expect(a == b, "load, factor \(f != nil)")
                // Not all zero: the kernels did copy something.
                #expect(a.contains { $0 != 0 })
            }
            let o = random(to.mosaicCount(channels: C), seed: 4)
            var z = random(C * H * W, seed: 5)
            z[0] = 0; z[7] = -0.0
            let start = random(to.mosaicCount(channels: C), seed: 6)
            for accumulate in [false, true] {
                var a = start, b = start
                a.withUnsafeMutableBufferPointer {
                    CKernelsBackend().cellsScale(channels: C, map: (H, W), to, o, z, epsilon: 1e-3, scale: 0.7,
                                                 $0.baseAddress!, accumulate: accumulate)
                }
                b.withUnsafeMutableBufferPointer {
                    ReferenceKernels().cellsScale(channels: C, map: (H, W), to, o, z, epsilon: 1e-3, scale: 0.7,
                                                  $0.baseAddress!, accumulate: accumulate)
                }
                expectClose(a, b, tol: 1e-6, "scale, accumulate \(accumulate)")
            }
        }
    }

    @Test("cells unpool: the transpose of the winner-take-all backward (2 x 2, and overlapping 3 x 3 / 2)")
    func unpool() {
        let (C, H, W) = (4, 13, 10)
        for pool in [Pool2d(kernel: (2, 2)), Pool2d(kernel: (3, 3), stride: (2, 2))] {
            let g = PoolGeometry(channels: C, height: H, width: W, pool: pool)
            let x = random(g.inCount, seed: 7)
            var y = [Float](repeating: 0, count: g.outCount), am = [Int32](repeating: 0, count: g.outCount)
            CKernelsBackend().maxPoolForward(x, g, &y, argmax: &am)
            let from = scatteredCells(count: 6, columns: 2, cell: (6, 5), map: (H, W), seed: 8)
            let to = CellLayout(gridColumns: 3, cellHeight: 4, cellWidth: 4, originY: from.originY.map { $0 / 2 },
                                originX: from.originX.map { $0 / 2 })
            let pre = random(from.mosaicCount(channels: C), seed: 9)
            let (a, b) = both(to.mosaicCount(channels: C)) { k, out in
                k.cellsUnpool(g, argmax: am, from: from, pre, to: to, out)
            }
            #expect(a == b, "unpool \(pool)")
            #expect(a.contains { $0 != 0 })
        }
    }

    @Test("cells contract against blocks of 1, 4, 6 and 9 maps", arguments: isaPaths)
    func contract(isa: Int32) throws {
        try withISA(isa) {
            let (C, H, W) = (6, 12, 41)
            // Cells wider than 16 (two vector steps a row; most of them inside the map) and narrower.
            for (cell, seed) in [((5, 19), UInt64(10)), ((4, 7), UInt64(20))] {
                let l = scatteredCells(count: 9, columns: 4, cell: cell, map: (H, W), seed: seed)
                let v = random(l.mosaicCount(channels: C), seed: seed + 1)
                for n in [1, 4, 6, 9] {
                    let R = random(n * C * H * W, seed: seed + UInt64(n))
                    let lda = n + 3
                    let (a, b) = try both(l.count * lda) { k, out in
                        for i in 0..<l.count * lda { out[i] = 42 }
                        try k.cellsContract(channels: C, map: (H, W), l, v, n: n, R, out, lda: lda)
                    }
                    expectClose(a, b, tol: 1e-5, "contract n=\(n) cell \(cell)")
                    // Columns past n are the caller's.
                    for p in 0..<l.count { for m in n..<lda { #expect(a[p * lda + m] == 42) } }
                }
            }
        }
    }

    /// Cells at unit steps along the grid rows, as the patch side lays them out where the grid has
    /// the map's resolution: row r's cells start at map row r + dy, cell q at column q + dx.
    func steppedCells(rows: Int, columns: Int, cell: (Int, Int), dy: Int, dx: Int) -> CellLayout {
        CellLayout(gridColumns: columns, cellHeight: cell.0, cellWidth: cell.1,
                   originY: (0..<rows * columns).map { Int32($0 / columns + dy) },
                   originX: (0..<rows * columns).map { Int32($0 % columns + dx) })
    }

    @Test("cells contract from packed cells (16 a vector) against the reference, on every ISA", arguments: isaPaths)
    func contractPacked(isa: Int32) throws {
        try withISA(isa) {
            let C = 3
            // Grid rows of 5 cells (one short group), 16 (one full), 21 and 37 (groups split evenly);
            // cells partly above, below, left and right of the map; cells wider than a vector.
            let cases: [(rows: Int, cols: Int, cell: (Int, Int), dy: Int, dx: Int, map: (Int, Int))] = [
                (4, 5, (7, 7), -3, -3, (6, 5)), (3, 16, (7, 7), -3, -3, (5, 16)), (2, 21, (3, 5), 2, -1, (6, 21)),
                (2, 37, (4, 19), -2, -9, (5, 30)), (1, 16, (1, 1), 0, 0, (1, 16)),
            ]
            for (i, t) in cases.enumerated() {
                let l = steppedCells(rows: t.rows, columns: t.cols, cell: t.cell, dy: t.dy, dx: t.dx)
                let count = CKernelsBackend().cellsPackedCount(channels: C, l)
                #expect(count >= l.mosaicCount(channels: C), "case \(i): packed count \(count)")
                guard count > 0 else { continue }
                let v = random(l.mosaicCount(channels: C), seed: UInt64(60 + i))
                var packed = [Float](repeating: .nan, count: count)
                packed.withUnsafeMutableBufferPointer {
                    CKernelsBackend().cellsPack(channels: C, map: t.map, l, v, $0.baseAddress!)
                }
                for n in [1, 5, 16, 17, 20, 33] {
                    let R = random(n * C * t.map.0 * t.map.1, seed: UInt64(70 + i * 40 + n))
                    let lda = n + 2
                    var a = [Float](repeating: 42, count: l.count * lda), b = a
                    try a.withUnsafeMutableBufferPointer {
                        try CKernelsBackend().cellsContract(channels: C, map: t.map, l, packed: packed, n: n, R,
                                                        $0.baseAddress!, lda: lda)
                    }
                    b.withUnsafeMutableBufferPointer {
                        ReferenceKernels().cellsContract(channels: C, map: t.map, l, v, n: n, R, $0.baseAddress!,
                                                         lda: lda)
                    }
                    expectClose(a, b, tol: 1e-5, "packed contract case \(i), n = \(n)")
                    #expect(a.contains { $0 != 0 && $0 != 42 })
                }
            }
            // Not at unit steps (a clipped border cell, scattered cells): no packed path.
            var clipped = steppedCells(rows: 2, columns: 6, cell: (3, 3), dy: -1, dx: -1)
            clipped.originX[0] = 0
            #expect(CKernelsBackend().cellsPackedCount(channels: C, clipped) == 0)
            let scattered = scatteredCells(count: 8, columns: 4, cell: (3, 3), map: (9, 9), seed: 3)
            #expect(CKernelsBackend().cellsPackedCount(channels: C, scattered) == 0)
            #expect(ReferenceKernels().cellsPackedCount(channels: C, steppedCells(rows: 1, columns: 4, cell: (3, 3),
                                                                                  dy: 0, dx: 0)) == 0)
        }
    }

    /// Winograd rounds differently; the bound is the one asserted for its backward.
    @Test("Winograd F(4x4, 3x3) forward against the float64 reference", arguments: isaPaths, winogradSchedules)
    func winogradForward(isa: Int32, schedule: Int32) throws {
        try withISA(isa) { try withSchedule(schedule) {
            for (i, (cin, cout, h, w)) in [(16, 17, 9, 7), (20, 64, 12, 13), (64, 16, 18, 70), (16, 24, 28, 28)].enumerated() {
                let g = ConvGeometry(inChannels: cin, height: h, width: w, outChannels: cout, kernelH: 3, kernelW: 3,
                                     padH: 1, padW: 1)
                let wt = random(cout * cin * 9, seed: UInt64(900 + i))
                let x = random(g.inCount, seed: UInt64(950 + i))
                guard let u = try CKernelsBackend(convolution: .winograd).prepareWinogradForward(weight: wt, g) else {
                    Issue.record("no Winograd forward"); return
                }
                var f = [Float](repeating: .nan, count: g.outCount), r = f
                try f.withUnsafeMutableBufferPointer { try CKernelsBackend().convForward(x, g, winograd: u, $0.baseAddress!) }
                r.withUnsafeMutableBufferPointer { ReferenceKernels().convForward(x, g, weight: wt, bias: nil, $0.baseAddress!) }
                expectClose(f, r, tol: 1e-5, "winograd forward \(g)")
            }
        } }
    }

    @Test("Winograd forward is offered for 3x3 / stride 1 / padding 1 with 16 or more channels, Winograd mode only")
    func winogradForwardScope() throws {
        let wt = random(16 * 16 * 9, seed: 1)
        func geo(_ cin: Int, _ cout: Int, k: Int = 3, stride: Int = 1, pad: Int = 1) -> ConvGeometry {
            ConvGeometry(inChannels: cin, height: 1, width: 1, outChannels: cout, kernelH: k, kernelW: k,
                         strideH: stride, strideW: stride, padH: pad, padW: pad)
        }
        #expect(try CKernelsBackend(convolution: .winograd).prepareWinogradForward(weight: wt, geo(16, 16)) != nil)
        #expect(try CKernelsBackend(convolution: .direct).prepareWinogradForward(weight: wt, geo(16, 16)) == nil)
        #expect(try CKernelsBackend().prepareWinogradForward(weight: wt, geo(16, 16, stride: 2)) == nil)
        #expect(try CKernelsBackend().prepareWinogradForward(weight: wt, geo(16, 16, pad: 0)) == nil)
        #expect(try CKernelsBackend().prepareWinogradForward(weight: random(3 * 16 * 9, seed: 2), geo(3, 16)) == nil)
        #expect(try ReferenceKernels().prepareWinogradForward(weight: wt, geo(16, 16)) == nil)
    }

    /// Every split of a net the patch side can take whole: 3x3 (Winograd on the patch side) and
    /// 5x5 (direct) layers, a 2 x 2 and an overlapping 3 x 3 / 2 max-pool, the z^B input layer
    /// (three terms) and two-pass alpha-beta; patch sizes that divide the sides and that do not.
    @Test("the patch side, split after every layer, equals the reference",
          arguments: ["paper-vgg", "0:zb;conv:alphabeta=2,1"], [1, 3, 4])
    func everySplit(spec: String, patch: Int) throws {
        let model = try stride1Net(seed: 70)
        let x = try image(Shape3(3, 26, 22), seed: 33), x2 = try image(Shape3(3, 26, 22), seed: 34)
        let composite = try Composite.named(spec)
        let head = SimilarityHead.randomProjection(outputs: 6, seed: 2)
        let slow = try Explainer(model: model, head: head, composite: composite, bounds: bounds,
                                 kernels: ReferenceKernels())
        let b = try slow.explain(x, x2, patch: patch)
        for k in 0...10 {
            let fast = try Explainer(model: model, head: head, composite: composite, bounds: bounds, blockSize: 4,
                                     kernels: CKernelsBackend(convolution: .winograd, patchSideLayers: .some(k)))
            let a = try fast.explain(x, x2, patch: patch)
            expectClose(a.relevance, b.relevance, tol: 1e-4, "R (\(spec), patch \(patch), \(k) layers on the patch side)")
            #expect(abs(a.similarity - b.similarity) <= 1e-5 * abs(b.similarity))
            let (_, profile) = try fast.profiledFactors(x, patch: patch)
            #expect(profile.patchSideLayers == k)
            // The packed contraction where the grid steps with the map (pixels before the first
            // pool), the cell by cell one where it steps 3 pixels (3 x 3 patches before the first
            // pool; past the pools their supports step about one pixel and may be packed).
            if (1...4).contains(k) { #expect(profile.packedCells == (patch == 1), "patch \(patch), k = \(k)") }
        }
    }

    @Test("the patch side stops at the first layer it cannot take (here a stride-2 convolution)")
    func reach() throws {
        let model = try smallNet(seed: 3, bias: true)  // conv, relu, conv, relu, maxpool, conv stride 2, ...
        let x = try image(Shape3(3, 21, 19), seed: 5)
        let ex = try Explainer(model: model, head: .randomProjection(outputs: 5, seed: 1), composite: .preset("paper-vgg"),
                               bounds: bounds, kernels: CKernelsBackend(patchSideLayers: .some(99)))
        let (_, profile) = try ex.profiledFactors(x, patch: 3)
        #expect(profile.patchSideLayers == 5)
        let slow = try Explainer(model: model, head: .randomProjection(outputs: 5, seed: 1), composite: .preset("paper-vgg"),
                                 bounds: bounds, kernels: ReferenceKernels())
        expectClose(try ex.factors(x, patch: 3).a, try slow.factors(x, patch: 3).a, tol: 1e-4, "factors")
    }

    /// The cost model on the paper's setup: VGG-16's layer shapes (seeded weights: the choice
    /// depends on shapes and on how much of the relevance can be non-zero), h = 100.
    @Test("the cost model takes the lower layers to the patch side for 8 x 8 patches, fewer for pixels, none for one output")
    func plan() throws {
        var layers: [Layer] = []
        var cin = 3, s: UInt64 = 0
        for c in [64, 64, 0, 128, 128, 0, 256, 256, 256, 0] {
            if c == 0 { layers.append(.maxPool2d(Pool2d(kernel: (2, 2)))); continue }
            s += 1
            layers.append(.conv2d(try Conv2d(
                weight: random(c * cin * 9, seed: s, scale: (2 / Float(cin * 9)).squareRoot()),
                bias: random(c, seed: s + 100, scale: 0.05), outChannels: c, inChannels: cin, kernel: (3, 3),
                padding: (1, 1))))
            layers.append(.relu)
            cin = c
        }
        let model = SequentialModel(layers)
        let x = try image(Shape3(3, 64, 64), seed: 9)
        func chosen(h: Int, patch: Int) throws -> Int {
            let ex = try Explainer(model: model, head: .randomProjection(outputs: h, seed: 1), composite: .preset("paper-vgg"),
                                   bounds: bounds, kernels: CKernelsBackend(convolution: .winograd, patchSideLayers: .some(nil)))
            return try ex.profiledFactors(x, patch: patch).1.patchSideLayers
        }
        let eight = try chosen(h: 100, patch: 8)
        #expect(eight > 4)
        // Per pixel, a cell is 9 pixels after the first 3 x 3 layer and 25 after the second, fewer
        // than 100 maps: the first block still pays from the patch side, the deeper ones do not.
        let one = try chosen(h: 100, patch: 1)
        #expect(one < eight, "patch 1: \(one) layers; patch 8: \(eight)")
        #expect(try chosen(h: 1, patch: 8) == 0)
    }
}
