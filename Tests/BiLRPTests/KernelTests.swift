import Foundation
import BiLRP
import BiLRPReference
import CKernels
import Testing

/// Every ISA path this CPU can run, up to the cap of BILRP_ISA when it is set. Each test runs once
/// per path with the path forced for the test's thread (`ck_set_thread_isa`), so the AVX2 and
/// portable kernels are checked on an AVX-512 machine too; `make test` also runs the whole engine
/// suite with BILRP_ISA=avx2 and BILRP_ISA=portable, which puts every explanation test (PyTorch
/// fixtures included) on those paths.
let isaPaths: [Int32] = {
    let active = ck_isa_active()
    if active == Int32(CK_ISA_NEON) { return [Int32(CK_ISA_PORTABLE), active] }  // aarch64
    return Array(Int32(CK_ISA_PORTABLE)...active)  // x86-64: portable, AVX2, AVX-512 up to this CPU's
}()

func random(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    var r = SplitMix64(seed: seed)
    return (0..<count).map { _ in Float(r.nextNormal()) * scale }
}

/// |fast - reference| <= tol * max(|reference|, floor) element-wise in the max norm.
func expectClose(_ fast: [Float], _ ref: [Float], tol: Float, _ what: String,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(fast.count == ref.count, "\(what): sizes differ", sourceLocation: sourceLocation)
    let scale = max(ref.map(abs).max() ?? 0, 1e-12)
    let err = zip(fast, ref).map { abs($0 - $1) }.max() ?? 0
    #expect(err <= tol * scale, "\(what): max error \(err) > \(tol) * \(scale)", sourceLocation: sourceLocation)
}

/// One direct LRP pass (`Kernels.lrpDirect`, epsilon 0.01) of n maps onto a copy of `start`.
func runDirectPass(_ k: any Kernels, n: Int, _ R: [Float], _ z: [Float], _ g: ConvGeometry, weights: [[Float]],
                inputs: [[Float]?], scale: Float, onto start: [Float], accumulate: Bool) throws -> [Float] {
    var out = start
    try withPointers(weights) { wp in try withOptionalPointers(inputs) { ip in
        try out.withUnsafeMutableBufferPointer {
            try k.lrpDirect(n: n, R, z, epsilon: 0.01, g, weights: wp, inputs: ip, scale: scale, $0.baseAddress!,
                            accumulate: accumulate)
        }
    } }
    return out
}

func withISA<T>(_ isa: Int32, _ body: () throws -> T) rethrows -> T {
    ck_set_thread_isa(isa)
    defer { ck_set_thread_isa(-1) }
    #expect(ck_isa_active() == isa)
    return try body()
}

/// Both Winograd schedules: fused (64 tiles per unit, through L2) and chunked (super-chunks).
let winogradSchedules: [Int32] = [Int32(CK_WINOGRAD_FUSED), Int32(CK_WINOGRAD_CHUNKED)]

/// Forces a Winograd schedule; the chunked one in super-chunks of 64 tiles (one panel), so that
/// chunks end inside tile rows and maps, as they do on VGG's 28 x 28 maps.
func withSchedule<T>(_ schedule: Int32, _ body: () throws -> T) rethrows -> T {
    let old = ck_winograd_set_schedule(schedule)
    let oldCap = ck_winograd_set_chunk_tiles(schedule == CK_WINOGRAD_CHUNKED ? 64 : 0)
    defer { ck_winograd_set_schedule(old); ck_winograd_set_chunk_tiles(oldCap) }
    #expect(ck_winograd_schedule(16, 16) == schedule)
    return try body()
}

/// Stable pointers to each array for the duration of body.
func withPointers<T>(_ arrays: [[Float]], _ body: ([UnsafePointer<Float>]) throws -> T) rethrows -> T {
    let buffers = arrays.map { a -> UnsafeMutableBufferPointer<Float> in
        let b = UnsafeMutableBufferPointer<Float>.allocate(capacity: a.count)
        _ = b.initialize(from: a)
        return b
    }
    defer { for b in buffers { b.deallocate() } }
    return try body(buffers.map { UnsafePointer($0.baseAddress!) })
}

func withOptionalPointers<T>(_ arrays: [[Float]?], _ body: ([UnsafePointer<Float>?]) throws -> T) rethrows -> T {
    let present = arrays.compactMap { $0 }
    return try withPointers(present) { ps in
        var it = ps.makeIterator()
        return try body(arrays.map { $0 == nil ? nil : it.next()! })
    }
}

/// Runs a kernel on both backends with fresh output buffers and returns (fast, reference).
func both(_ outCount: Int, _ body: (any Kernels, UnsafeMutablePointer<Float>) throws -> Void) rethrows
    -> ([Float], [Float]) {
    var a = [Float](repeating: .nan, count: outCount)
    var b = [Float](repeating: .nan, count: outCount)
    try a.withUnsafeMutableBufferPointer { try body(CKernelsBackend(), $0.baseAddress!) }
    try b.withUnsafeMutableBufferPointer { try body(ReferenceKernels(), $0.baseAddress!) }
    return (a, b)
}

// Conv shapes: odd sizes, stride 2, padding 0 and 1, channel counts off the vector width, 1x1, 5x3.
let convCases: [ConvGeometry] = [
    ConvGeometry(inChannels: 3, height: 9, width: 7, outChannels: 5, kernelH: 3, kernelW: 3, padH: 1, padW: 1),
    ConvGeometry(inChannels: 7, height: 11, width: 13, outChannels: 17, kernelH: 3, kernelW: 3, strideH: 2, strideW: 2),
    ConvGeometry(inChannels: 16, height: 8, width: 8, outChannels: 70, kernelH: 1, kernelW: 1),
    ConvGeometry(inChannels: 5, height: 10, width: 9, outChannels: 13, kernelH: 5, kernelW: 3, strideH: 2, strideW: 1, padH: 2, padW: 1),
    ConvGeometry(inChannels: 33, height: 1, width: 1, outChannels: 9, kernelH: 1, kernelW: 1),
    ConvGeometry(inChannels: 64, height: 12, width: 12, outChannels: 67, kernelH: 3, kernelW: 3, padH: 1, padW: 1),
    // Stride 1, rows wider than a 64-column panel, two K steps (40 x 3 x 3 = 360), no column padding.
    ConvGeometry(inChannels: 40, height: 7, width: 45, outChannels: 13, kernelH: 3, kernelW: 3, padH: 1, padW: 0),
    ConvGeometry(inChannels: 6, height: 6, width: 70, outChannels: 8, kernelH: 5, kernelW: 3, padH: 2, padW: 1),
    // Stride 1 with rows a multiple of 16 wide: the implicit GEMM's panels join pieces of rows and
    // write y directly (1, 2 and 4 quarters per row; 5 rows of 32 leave a half panel at the end).
    ConvGeometry(inChannels: 30, height: 7, width: 16, outChannels: 19, kernelH: 3, kernelW: 3, padH: 1, padW: 1),
    ConvGeometry(inChannels: 24, height: 5, width: 32, outChannels: 13, kernelH: 3, kernelW: 3, padH: 1, padW: 1),
    // The same layout with 5 x 5 / pad 2, 5 x 3 with unequal pads, no padding at all, and 4
    // output rows (the 4-row micro-kernel).
    ConvGeometry(inChannels: 8, height: 9, width: 48, outChannels: 9, kernelH: 5, kernelW: 5, padH: 2, padW: 2),
    ConvGeometry(inChannels: 6, height: 9, width: 32, outChannels: 4, kernelH: 5, kernelW: 3, padH: 2, padW: 1),
    ConvGeometry(inChannels: 7, height: 6, width: 18, outChannels: 5, kernelH: 3, kernelW: 3),
    ConvGeometry(inChannels: 5, height: 6, width: 66, outChannels: 7, kernelH: 3, kernelW: 3),
    // Rows of 64 and 128 with padding 1 (VGG's): the strips with 16 leading zeros per row, the
    // right padding read from the next row; 40 rows of 128 make 8 column blocks of whole rows.
    ConvGeometry(inChannels: 9, height: 6, width: 64, outChannels: 14, kernelH: 3, kernelW: 3, padH: 1, padW: 1),
    ConvGeometry(inChannels: 4, height: 40, width: 128, outChannels: 8, kernelH: 3, kernelW: 3, padH: 1, padW: 1),
    // Padding wider than the kernel's reach (a 1 x 1 with padding 1): rows of Wo > W + pw.
    ConvGeometry(inChannels: 3, height: 7, width: 9, outChannels: 5, kernelH: 1, kernelW: 1, padH: 1, padW: 1),
    // A pointwise layer over more columns than one block of the fused direct pass (about 2700
    // here), whose products go straight into the map: ResNet's 1 x 1 convolutions.
    ConvGeometry(inChannels: 64, height: 60, width: 61, outChannels: 32, kernelH: 1, kernelW: 1),
]

@Suite("C kernels against the pure-Swift reference", .serialized)
struct KernelTests {
    @Test("GEMM with transposes, edges and accumulation", arguments: isaPaths)
    func gemm(isa: Int32) {
        withISA(isa) {
            // (M, N, K, transA, transB): sizes off every micro-tile (6x64, 6x16) and KC = 256; the
            // specialized kernels for slivers of 4 rows (M = 100: mr 4; M = 11: mr 5) and panels of
            // 8 columns (N = 24).
            let cases = [(1, 1, 1, false, false), (7, 65, 3, false, true), (13, 130, 300, true, false),
                         (100, 17, 257, true, true), (97, 771, 40, false, false), (11, 24, 9, false, false)]
            for (i, (m, n, k, ta, tb)) in cases.enumerated() {
                let a = random(m * k, seed: UInt64(10 + i)), b = random(k * n, seed: UInt64(20 + i))
                let (rsa, csa) = ta ? (1, m) : (k, 1)
                let (rsb, csb) = tb ? (1, k) : (n, 1)
                for acc in [false, true] {
                    let start = random(m * n, seed: UInt64(30 + i))
                    var fast = start, ref = start
                    let status = fast.withUnsafeMutableBufferPointer { c in
                        ck_sgemm(Int32(m), Int32(n), Int32(k), a, rsa, csa, b, rsb, csb, c.baseAddress!, n, acc ? 1 : 0)
                    }
                    #expect(status == Int32(CK_OK))
                    ReferenceKernels.gemm(m: m, n: n, k: k, a, rsa: rsa, csa: csa, b, rsb: rsb, csb: csb, &ref, ldc: n,
                                          accumulate: acc)
                    expectClose(fast, ref, tol: 1e-5, "gemm \(m)x\(n)x\(k) ta=\(ta) tb=\(tb) acc=\(acc)")
                }
            }
        }
    }

    /// The implicit GEMM sums in the packed path's order (bias first, then the same K steps), so
    /// both give the same bits; the explanations' agreement with PyTorch depends on it (R amplifies
    /// rounding in z where z is small: 2.7e-5 of max |R| at 224 x 224 when the bias came last).
    /// On the default thread count (each thread copies the padded rows of its own column blocks).
    /// Not looped over thread counts: the count is process-wide and other suites run meanwhile
    /// (the Winograd backward picks its schedule by it, winograd.c; the recycled-buffers test compares
    /// bits of two explanations).
    @Test("forward: implicit GEMM, packed panels and prepared weights give identical results")
    func implicitBitwise() throws {
        let threads = CKernelsBackend.threads
        for (i, g) in convCases.enumerated() where g.strideH == 1 && g.strideW == 1 {
            let x = random(g.inCount, seed: UInt64(50 + i))
            let w = random(g.outChannels * g.inChannels * g.kernelH * g.kernelW, seed: UInt64(60 + i))
            let bias = random(g.outChannels, seed: UInt64(70 + i))
            let k = CKernelsBackend(), packed = k.prepareForward(weight: w, g)!
            func run(_ implicit: Bool, prepared: Bool) throws -> [Float] {
                let old = ck_conv_set_implicit(implicit ? 1 : 0)
                defer { ck_conv_set_implicit(old) }
                var y = [Float](repeating: .nan, count: g.outCount)
                try y.withUnsafeMutableBufferPointer {
                    if prepared { try k.convForward(x, g, prepared: packed, bias: bias, $0.baseAddress!) }
                    else { try k.convForward(x, g, weight: w, bias: bias, $0.baseAddress!) }
                }
                return y
            }
            let packedPanels = try run(false, prepared: false)
            #expect(try run(true, prepared: false) == packedPanels, "\(g), \(threads) threads")
            #expect(try run(true, prepared: true) == packedPanels, "prepared weights \(g), \(threads) threads")
            #expect(try run(false, prepared: true) == packedPanels, "prepared weights, packed panels \(g), \(threads) threads")
        }
    }

    /// implicit: stride-1 convolutions read im2col rows in place on AVX-512; off, every ISA packs.
    @Test("convolution forward", arguments: isaPaths, [true, false])
    func convForward(isa: Int32, implicit: Bool) throws {
        let old = ck_conv_set_implicit(implicit ? 1 : 0)
        defer { ck_conv_set_implicit(old) }
        try withISA(isa) {
            for (i, g) in convCases.enumerated() {
                let x = random(g.inCount, seed: UInt64(i))
                let w = random(g.outChannels * g.inChannels * g.kernelH * g.kernelW, seed: UInt64(100 + i))
                let bias = random(g.outChannels, seed: UInt64(200 + i))
                for withBias in [false, true] {
                    let (f, r) = try both(g.outCount) { k, y in
                        try k.convForward(x, g, weight: w, bias: withBias ? bias : nil, y)
                    }
                    expectClose(f, r, tol: 1e-5, "conv forward \(g) bias=\(withBias)")
                    // Weights packed once per layer (what explanations use), on this ISA too.
                    let k = CKernelsBackend()
                    guard let packed = k.prepareForward(weight: w, g) else {
                        Issue.record("no packed forward weights for \(g)"); continue
                    }
                    var y = [Float](repeating: .nan, count: g.outCount)
                    try y.withUnsafeMutableBufferPointer {
                        try k.convForward(x, g, prepared: packed, bias: withBias ? bias : nil, $0.baseAddress!)
                    }
                    expectClose(y, r, tol: 1e-5, "conv forward, prepared weights \(g) bias=\(withBias)")
                }
            }
        }
    }

    @Test("convolution relevance backward (transposed), blocks of n maps", arguments: isaPaths)
    func convBackward(isa: Int32) throws {
        try withISA(isa) {
            for (i, g) in convCases.enumerated() {
                let w = random(g.outChannels * g.inChannels * g.kernelH * g.kernelW, seed: UInt64(300 + i))
                for n in [1, 3, 5] {
                    let s = random(n * g.outCount, seed: UInt64(400 + i * 7 + n))
                    let (f, r) = try both(n * g.inCount) { k, c in try k.convBackward(n: n, s, g, weight: w, c) }
                    expectClose(f, r, tol: 1e-5, "conv backward n=\(n) \(g)")
                }
            }
        }
    }

    /// Winograd changes rounding; measured against the float64 reference its max error stays below
    /// 1e-5 of the largest value on these shapes (the bound asserted here).
    @Test("Winograd F(4x4, 3x3) backward against the float64 reference", arguments: isaPaths, winogradSchedules)
    func winogradBackward(isa: Int32, schedule: Int32) throws {
        try withISA(isa) { try withSchedule(schedule) {
            // (16, 8, 6, 70): 18 tiles per row, so the vector pass runs 16 tiles and a masked tail;
            // (24, 20, 28, 28): VGG's 28 x 28 rows of 7 tiles, chunks ending inside rows;
            // (20, 18, 16, 16), (19, 24, 13, 14), (16, 17, 15, 13): maps of 4 x 4 tiles, one map per
            // vector on AVX-512 (rows loaded whole, masked past the map's width).
            let shapes = [(16, 5, 9, 7), (17, 70, 12, 13), (64, 67, 12, 12), (33, 9, 1, 5), (16, 3, 17, 4), (20, 16, 4, 8),
                          (16, 8, 6, 70), (24, 20, 28, 28), (20, 18, 16, 16), (19, 24, 13, 14), (16, 17, 15, 13)]
            for (i, (cin, cout, h, w)) in shapes.enumerated() {
                let g = ConvGeometry(inChannels: cin, height: h, width: w, outChannels: cout, kernelH: 3, kernelW: 3,
                                     padH: 1, padW: 1)
                let wt = random(cout * cin * 9, seed: UInt64(700 + i))
                let fast = CKernelsBackend(convolution: .winograd)
                guard let u = try fast.prepareBackward(weight: wt, g) else { Issue.record("no Winograd path"); return }
                #expect(try CKernelsBackend(convolution: .direct).prepareBackward(weight: wt, g) == nil)
                for n in [1, 3] {
                    let s = random(n * g.outCount, seed: UInt64(800 + i * 7 + n))
                    var f = [Float](repeating: .nan, count: n * g.inCount), r = f
                    try f.withUnsafeMutableBufferPointer { try fast.convBackward(n: n, s, g, prepared: u, $0.baseAddress!) }
                    r.withUnsafeMutableBufferPointer { ReferenceKernels().convBackward(n: n, s, g, weight: wt, $0.baseAddress!) }
                    expectClose(f, r, tol: 1e-5, "winograd backward n=\(n) \(g)")
                }
            }
        } }
    }

    @Test("fused LRP term (divide, Winograd backward, product) against the reference steps",
          arguments: isaPaths, winogradSchedules)
    func fusedTerm(isa: Int32, schedule: Int32) throws {
        try withISA(isa) { try withSchedule(schedule) {
          // 11 x 67: row-wise transforms; 9 x 14: at most 4 tiles per row, the 16-tiles-per-vector
          // variants on AVX-512, with 3 maps of 12 tiles so vectors and 64-tile units span maps;
          // 16 x 16 and 14 x 13: 16 tiles a map, the map-per-vector variants.
          for (h, w) in [(11, 67), (9, 14), (16, 16), (14, 13)] {
            let g = ConvGeometry(inChannels: 24, height: h, width: w, outChannels: 19, kernelH: 3, kernelW: 3, padH: 1, padW: 1)
            let wt = random(19 * 24 * 9, seed: 901), n = 3
            let R = random(n * g.outCount, seed: 902), a = random(g.inCount, seed: 903)
            var z = random(g.outCount, seed: 904)
            z[0] = 0; z[5] = 1e-12
            let u = try CKernelsBackend(convolution: .winograd).prepareBackward(weight: wt, g)!
            for (useA, acc) in [(true, false), (false, true)] {
                let start = random(n * g.inCount, seed: 905)
                var f = start, r = start
                try f.withUnsafeMutableBufferPointer {
                    try CKernelsBackend().lrpTerm(n: n, R, z, epsilon: 0.01, g, prepared: u, useA ? a : nil, scale: -2,
                                              $0.baseAddress!, accumulate: acc)
                }
                let ref = ReferenceKernels()
                var s = [Float](repeating: 0, count: n * g.outCount), c = [Float](repeating: 0, count: n * g.inCount)
                s.withUnsafeMutableBufferPointer { ref.lrpDivide(n: n, count: g.outCount, R, z, epsilon: 0.01, $0.baseAddress!) }
                c.withUnsafeMutableBufferPointer { ref.convBackward(n: n, s, g, weight: wt, $0.baseAddress!) }
                r.withUnsafeMutableBufferPointer {
                    ref.lrpProduct(n: n, count: g.inCount, useA ? a : nil, c, scale: -2, $0.baseAddress!, accumulate: acc)
                }
                expectClose(f, r, tol: 1e-5, "fused term \(h)x\(w) a=\(useA) accumulate=\(acc)")
            }
          }
        } }
    }

    /// The direct path of a whole pass (z^B has three terms): per map with s packed from R and z
    /// when there are at least two maps per thread, else the separate steps; both against the
    /// reference's steps, with inputs and without, accumulating and not.
    @Test("fused direct LRP pass (T terms) against the reference steps", arguments: isaPaths)
    func directPass(isa: Int32) throws {
        try withISA(isa) {
            let nFused = 2 * CKernelsBackend.threads + 1
            for (i, g) in convCases.enumerated() {
                let wCount = g.outChannels * g.inChannels * g.kernelH * g.kernelW
                let terms = 1 + i % 3
                let ws = (0..<terms).map { random(wCount, seed: UInt64(1000 + 10 * i + $0)) }
                let inputs: [[Float]?] = (0..<terms).map { $0 == 1 ? nil : random(g.inCount, seed: UInt64(1100 + 10 * i + $0)) }
                var z = random(g.outCount, seed: UInt64(1200 + i))
                z[0] = 0
                for n in [1, nFused] {
                    let R = random(n * g.outCount, seed: UInt64(1300 + i))
                    for acc in [false, true] {
                        let start = random(n * g.inCount, seed: UInt64(1400 + i))
                        func run(_ k: any Kernels) throws -> [Float] {
                            try runDirectPass(k, n: n, R, z, g, weights: ws, inputs: inputs, scale: -0.5, onto: start,
                                           accumulate: acc)
                        }
                        expectClose(try run(CKernelsBackend()), try run(ReferenceKernels()), tol: 1e-5,
                                    "direct pass \(g) terms=\(terms) n=\(n) accumulate=\(acc)")
                    }
                }
            }
        }
    }

    /// Weights all 1 (the flat rule) take the rank-one path (one channel's col2im of the column
    /// sums) when there are at least two maps per thread: against the reference's full product,
    /// with the term's input and without (the flat rule's 1), on strided and padded geometries.
    @Test("direct LRP pass with all-ones weights (rank-one path) against the reference", arguments: isaPaths)
    func flatPass(isa: Int32) throws {
        try withISA(isa) {
            let nFused = 2 * CKernelsBackend.threads + 1
            for (i, g) in convCases.enumerated() {
                let ones = [Float](repeating: 1, count: g.outChannels * g.inChannels * g.kernelH * g.kernelW)
                let input: [Float]? = i % 2 == 0 ? nil : random(g.inCount, seed: UInt64(1500 + i))
                let z = random(g.outCount, seed: UInt64(1600 + i))
                for n in [1, nFused] {
                    let R = random(n * g.outCount, seed: UInt64(1700 + i))
                    for acc in [false, true] {
                        let start = random(n * g.inCount, seed: UInt64(1800 + i))
                        func run(_ k: any Kernels) throws -> [Float] {
                            try runDirectPass(k, n: n, R, z, g, weights: [ones], inputs: [input], scale: 0.75, onto: start,
                                           accumulate: acc)
                        }
                        expectClose(try run(CKernelsBackend()), try run(ReferenceKernels()), tol: 1e-5,
                                    "flat pass \(g) input=\(input != nil) n=\(n) accumulate=\(acc)")
                    }
                }
            }
        }
    }

    /// A Winograd LRP term that unpools a max-pool's relevance as it loads against the pool's
    /// backward then the term: 2 x 2 pools on the row-wise path (an odd side leaves a row and a
    /// column no window covers), on the 16-tiles-per-vector path (8 x 8), on the map-per-vector
    /// path (16 x 16, 14 x 15), and a 3 x 3 stride-2 pool (overlapping: the separate steps).
    @Test("Winograd LRP term unpooling on load against pool backward then term", arguments: isaPaths, winogradSchedules)
    func unpoolingTerm(isa: Int32, schedule: Int32) throws {
        try withISA(isa) { try withSchedule(schedule) {
            let k = CKernelsBackend(convolution: .winograd)
            for (i, (h, w, pk, ps)) in [(13, 19, 2, 2), (6, 70, 2, 2), (8, 8, 2, 2), (12, 15, 3, 2), (16, 16, 2, 2),
                                        (14, 15, 2, 2)].enumerated() {
                // The layer: 17 -> 20 channels, 3x3; its relevance comes through the pool above it.
                let g = ConvGeometry(inChannels: 17, height: h, width: w, outChannels: 20, kernelH: 3, kernelW: 3,
                                     padH: 1, padW: 1)
                let pg = PoolGeometry(channels: 20, height: h, width: w,
                                      pool: Pool2d(kernel: (pk, pk), stride: (ps, ps)))
                let n = 3
                let u = try k.prepareBackward(weight: random(20 * 17 * 9, seed: UInt64(1500 + i)), g)!
                let act = random(g.outCount, seed: UInt64(1510 + i))
                var argmax = [Int32](repeating: 0, count: pg.outCount), pooledAct = [Float](repeating: 0, count: pg.outCount)
                k.maxPoolForward(act, pg, &pooledAct, argmax: &argmax)
                let Rp = random(n * pg.outCount, seed: UInt64(1520 + i))
                var z = random(g.outCount, seed: UInt64(1530 + i))
                z[1] = 0
                let a = random(g.inCount, seed: UInt64(1540 + i)), start = random(n * g.inCount, seed: UInt64(1550 + i))
                for acc in [false, true] {
                    var fused = start, steps = start
                    try fused.withUnsafeMutableBufferPointer {
                        try k.lrpTermUnpooling(n: n, Rp, argmax: argmax, pg, z, epsilon: 0.01, g, prepared: u, a, scale: 0.5,
                                           $0.baseAddress!, accumulate: acc)
                    }
                    var R = [Float](repeating: .nan, count: n * pg.inCount)
                    k.maxPoolBackward(n: n, Rp, pg, argmax: argmax, &R)
                    try steps.withUnsafeMutableBufferPointer {
                        try k.lrpTerm(n: n, R, z, epsilon: 0.01, g, prepared: u, a, scale: 0.5, $0.baseAddress!, accumulate: acc)
                    }
                    #expect(fused == steps, "\(h)x\(w) pool \(pk)/\(ps) accumulate=\(acc)")
                }
            }
        } }
    }

    /// The reference steps of one LRP term: Rin = [Rin +] scale * a * conv^T(R / stab(z)).
    func referenceTerm(n: Int, _ R: [Float], _ z: [Float], _ g: ConvGeometry, weight: [Float], _ a: [Float]?,
                       scale: Float, start: [Float], accumulate: Bool) -> [Float] {
        let ref = ReferenceKernels()
        var s = [Float](repeating: 0, count: n * g.outCount), c = [Float](repeating: 0, count: n * g.inCount)
        var out = start
        s.withUnsafeMutableBufferPointer { ref.lrpDivide(n: n, count: g.outCount, R, z, epsilon: 0.01, $0.baseAddress!) }
        c.withUnsafeMutableBufferPointer { ref.convBackward(n: n, s, g, weight: weight, $0.baseAddress!) }
        out.withUnsafeMutableBufferPointer {
            ref.lrpProduct(n: n, count: g.inCount, a, c, scale: scale, $0.baseAddress!, accumulate: accumulate)
        }
        return out
    }

    /// Relevance that is zero on a pattern shared by the maps (about 30 % non-zero), except that map
    /// 0 is zero everywhere and the last map alone has a few extra entries: the sparse kernel must
    /// keep an entry that any map needs.
    func sparseRelevance(n: Int, count: Int, seed: UInt64) -> [Float] {
        var R = random(n * count, seed: seed)
        let keep = random(count, seed: seed &+ 1)
        for m in 0..<n {
            for i in 0..<count where keep[i] < 0.5 && !(m == n - 1 && i % 7 == 0) { R[m * count + i] = 0 }
        }
        if n > 1 { for i in 0..<count { R[i] = 0 } }
        return R
    }

    /// Shapes: 3x3 padding 1, 5x3 with unequal padding, 1x1, 3x3 without padding; channel counts off
    /// the 16/32/64 column tiles. Block sizes: 1, 5 (short map tiles: 64 columns on AVX-512 where
    /// the channels allow), 13 and 29 (a padded tile).
    @Test("sparse LRP term (non-zero relevance only) against the reference steps", arguments: isaPaths)
    func sparseTerm(isa: Int32) throws {
        try withISA(isa) {
            let k = CKernelsBackend(convolution: .winograd, sparseBelowDensity: 2)
            let shapes = [
                ConvGeometry(inChannels: 20, height: 11, width: 19, outChannels: 24, kernelH: 3, kernelW: 3, padH: 1, padW: 1),
                ConvGeometry(inChannels: 33, height: 9, width: 14, outChannels: 17, kernelH: 5, kernelW: 3, padH: 2, padW: 1),
                ConvGeometry(inChannels: 64, height: 6, width: 33, outChannels: 16, kernelH: 1, kernelW: 1),
                ConvGeometry(inChannels: 16, height: 7, width: 8, outChannels: 12, kernelH: 3, kernelW: 3),
            ]
            for (i, g) in shapes.enumerated() {
                let w = random(g.outChannels * g.inChannels * g.kernelH * g.kernelW, seed: UInt64(1600 + i))
                let prepared = k.prepareSparseBackward(weight: w, g)!
                var z = random(g.outCount, seed: UInt64(1610 + i))
                z[0] = 0
                let a = random(g.inCount, seed: UInt64(1620 + i))
                for n in [1, 5, 13, 29] {
                    let R = sparseRelevance(n: n, count: g.outCount, seed: UInt64(1630 + i + n))
                    for (useA, acc) in [(true, false), (false, true)] {
                        let start = random(n * g.inCount, seed: UInt64(1640 + i))
                        var fast = start
                        try fast.withUnsafeMutableBufferPointer {
                            try k.lrpTermSparse(n: n, R, pooled: nil, z, epsilon: 0.01, g, prepared: prepared,
                                            useA ? a : nil, scale: -1.5, $0.baseAddress!, accumulate: acc)
                        }
                        let ref = referenceTerm(n: n, R, z, g, weight: w, useA ? a : nil, scale: -1.5, start: start,
                                                accumulate: acc)
                        expectClose(fast, ref, tol: 1e-5, "sparse term \(g) n=\(n) a=\(useA) accumulate=\(acc)")
                    }
                }
            }
        }
    }

    /// The sparse term reading a max-pool's relevance: 2 x 2 windows unpooled while packing (an odd
    /// side leaves a row and a column no window covers), 3 x 3 stride 2 (overlapping: unpooled first).
    @Test("sparse LRP term unpooling a max-pool against pool backward then the reference steps", arguments: isaPaths)
    func sparseUnpoolingTerm(isa: Int32) throws {
        try withISA(isa) {
            let k = CKernelsBackend(convolution: .winograd, sparseBelowDensity: 2)
            for (i, (h, w, pk, ps)) in [(13, 19, 2, 2), (8, 8, 2, 2), (12, 15, 3, 2)].enumerated() {
                let g = ConvGeometry(inChannels: 18, height: h, width: w, outChannels: 20, kernelH: 3, kernelW: 3,
                                     padH: 1, padW: 1)
                let pg = PoolGeometry(channels: 20, height: h, width: w, pool: Pool2d(kernel: (pk, pk), stride: (ps, ps)))
                let wt = random(20 * 18 * 9, seed: UInt64(1700 + i))
                let prepared = k.prepareSparseBackward(weight: wt, g)!
                let act = random(g.outCount, seed: UInt64(1710 + i))
                var argmax = [Int32](repeating: 0, count: pg.outCount), pooledAct = [Float](repeating: 0, count: pg.outCount)
                k.maxPoolForward(act, pg, &pooledAct, argmax: &argmax)
                var z = random(g.outCount, seed: UInt64(1720 + i))
                z[1] = 0
                let a = random(g.inCount, seed: UInt64(1730 + i))
                for n in [3, 11] {
                    let Rp = sparseRelevance(n: n, count: pg.outCount, seed: UInt64(1740 + i + n))
                    var R = [Float](repeating: .nan, count: n * pg.inCount)
                    ReferenceKernels().maxPoolBackward(n: n, Rp, pg, argmax: argmax, &R)
                    for acc in [false, true] {
                        let start = random(n * g.inCount, seed: UInt64(1750 + i))
                        var fast = start
                        try argmax.withUnsafeBufferPointer { am in
                            try fast.withUnsafeMutableBufferPointer {
                                try k.lrpTermSparse(n: n, Rp, pooled: (am.baseAddress!, pg), z, epsilon: 0.01, g,
                                                prepared: prepared, a, scale: 0.5, $0.baseAddress!, accumulate: acc)
                            }
                        }
                        let ref = referenceTerm(n: n, R, z, g, weight: wt, a, scale: 0.5, start: start, accumulate: acc)
                        expectClose(fast, ref, tol: 1e-5, "sparse unpooling \(h)x\(w) pool \(pk)/\(ps) n=\(n) accumulate=\(acc)")
                    }
                }
            }
        }
    }

    @Test("the sparse path is offered for stride 1 and 16 or more input channels, in Winograd mode, when enabled")
    func sparseScope() {
        let g = ConvGeometry(inChannels: 16, height: 8, width: 8, outChannels: 4, kernelH: 3, kernelW: 3, padH: 1, padW: 1)
        let w = random(4 * 16 * 9, seed: 2)
        #expect(CKernelsBackend(convolution: .winograd, sparseBelowDensity: 0.2).prepareSparseBackward(weight: w, g) != nil)
        #expect(CKernelsBackend(convolution: .winograd, sparseBelowDensity: 0).prepareSparseBackward(weight: w, g) == nil)
        #expect(CKernelsBackend(convolution: .direct, sparseBelowDensity: 0.2).prepareSparseBackward(weight: w, g) == nil)
        var s2 = g
        s2.strideH = 2
        #expect(CKernelsBackend(sparseBelowDensity: 0.2).prepareSparseBackward(weight: w, s2) == nil)
        let rgb = ConvGeometry(inChannels: 3, height: 8, width: 8, outChannels: 4, kernelH: 3, kernelW: 3, padH: 1, padW: 1)
        #expect(CKernelsBackend(sparseBelowDensity: 0.2).prepareSparseBackward(weight: random(4 * 3 * 9, seed: 3), rgb) == nil)
    }

    @Test("Winograd is only offered for 3x3, stride 1, padding 1")
    func winogradScope() throws {
        let k = CKernelsBackend(convolution: .winograd)
        let w = random(4 * 3 * 9, seed: 1)
        #expect(try k.prepareBackward(weight: w, ConvGeometry(inChannels: 3, height: 8, width: 8, outChannels: 4, kernelH: 3, kernelW: 3, strideH: 2, strideW: 2, padH: 1, padW: 1)) == nil)
        #expect(try k.prepareBackward(weight: w, ConvGeometry(inChannels: 3, height: 8, width: 8, outChannels: 4, kernelH: 3, kernelW: 3)) == nil)
        #expect(try k.prepareBackward(weight: w, ConvGeometry(inChannels: 3, height: 8, width: 8, outChannels: 4, kernelH: 3, kernelW: 3, padH: 1, padW: 1)) == nil, "3 output channels: direct")
    }

    /// Grouped geometries: depthwise (with and without a multiplier, strided, padded wider than the
    /// kernel's reach), a few channels per group, 1 x 1 groups, rows wider than a vector.
    static let groupedCases: [ConvGeometry] = [
        ConvGeometry(inChannels: 12, height: 11, width: 13, outChannels: 12, kernelH: 3, kernelW: 3, strideH: 2,
                     strideW: 2, padH: 1, padW: 1, groups: 12),
        ConvGeometry(inChannels: 5, height: 9, width: 37, outChannels: 10, kernelH: 5, kernelW: 3, strideH: 1,
                     strideW: 2, padH: 2, padW: 3, groups: 5),
        ConvGeometry(inChannels: 8, height: 7, width: 21, outChannels: 6, kernelH: 3, kernelW: 3, padH: 1, padW: 1, groups: 2),
        ConvGeometry(inChannels: 16, height: 6, width: 6, outChannels: 32, kernelH: 1, kernelW: 1, groups: 4),
        ConvGeometry(inChannels: 6, height: 10, width: 10, outChannels: 6, kernelH: 7, kernelW: 7, strideH: 3,
                     strideW: 1, padH: 3, padW: 3, groups: 3),
    ]

    @Test("grouped and depthwise convolutions: forward, backward and the LRP pass against the reference",
          arguments: isaPaths)
    func groupedConvolutions(isa: Int32) throws {
        try withISA(isa) {
            for (i, g) in Self.groupedCases.enumerated() {
                let w = random(g.weightCount, seed: UInt64(2000 + i))
                let x = random(g.inCount, seed: UInt64(2100 + i)), bias = random(g.outChannels, seed: UInt64(2200 + i))
                for withBias in [false, true] {
                    let (f, r) = try both(g.outCount) { k, y in try k.convForward(x, g, weight: w, bias: withBias ? bias : nil, y) }
                    expectClose(f, r, tol: 1e-5, "grouped forward \(g) bias=\(withBias)")
                }
                for n in [1, 4] {
                    let s = random(n * g.outCount, seed: UInt64(2300 + 7 * i + n))
                    let (f, r) = try both(n * g.inCount) { k, c in try k.convBackward(n: n, s, g, weight: w, c) }
                    expectClose(f, r, tol: 1e-5, "grouped backward n=\(n) \(g)")
                    var z = random(g.outCount, seed: UInt64(2400 + i))
                    z[1] = 0
                    let ws = [w, random(g.weightCount, seed: UInt64(2500 + i))]
                    let inputs: [[Float]?] = [x, nil]
                    let start = random(n * g.inCount, seed: UInt64(2600 + i))
                    func run(_ k: any Kernels) throws -> [Float] {
                        try runDirectPass(k, n: n, s, z, g, weights: ws, inputs: inputs, scale: 0.75, onto: start,
                                          accumulate: true)
                    }
                    expectClose(try run(CKernelsBackend()), try run(ReferenceKernels()), tol: 1e-5, "grouped pass n=\(n) \(g)")
                }
                try expectAdjoint(g, x: x, s: random(g.outCount, seed: UInt64(2700 + i)), weight: w, tol: 1e-5)
                let k = CKernelsBackend()
                // No prepared form: the dense kernels would read the weight as (K, C, kh, kw).
                #expect(k.prepareForward(weight: w, g) == nil && !k.hasSparseBackward(g))
                #expect(try k.prepareBackward(weight: w, g) == nil && k.prepareWinogradForward(weight: w, g) == nil)
            }
        }
    }

    /// <conv(x), s> == <x, conv^T(s)> on the C kernels, relative to max(|<conv(x), s>|, 1).
    func expectAdjoint(_ g: ConvGeometry, x: [Float], s: [Float], weight w: [Float], tol: Double) throws {
        var y = [Float](repeating: 0, count: g.outCount), c = [Float](repeating: 0, count: g.inCount)
        let k = CKernelsBackend()
        try y.withUnsafeMutableBufferPointer { try k.convForward(x, g, weight: w, bias: nil, $0.baseAddress!) }
        try c.withUnsafeMutableBufferPointer { try k.convBackward(n: 1, s, g, weight: w, $0.baseAddress!) }
        let lhs = zip(y, s).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        let rhs = zip(x, c).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        #expect(abs(lhs - rhs) <= tol * max(abs(lhs), 1), "adjoint \(g)")
    }

    @Test("the backward is the adjoint of the forward: <conv(x), s> == <x, conv^T(s)>")
    func adjoint() throws {
        let g = convCases[3]
        try expectAdjoint(g, x: random(g.inCount, seed: 1), s: random(g.outCount, seed: 2),
                          weight: random(g.weightCount, seed: 3), tol: 1e-4)
    }

    @Test("LRP element-wise steps, including z = 0 and a = nil")
    func elementwise() {
        let n = 3, len = 1001
        var z = random(len, seed: 5)
        z[0] = 0; z[1] = -0.0; z[2] = 1e-12
        let R = random(n * len, seed: 6), a = random(len, seed: 7), c = random(n * len, seed: 8)
        for eps: Float in [1e-9, 0.25] {
            let (f, r) = both(n * len) { k, s in k.lrpDivide(n: n, count: len, R, z, epsilon: eps, s) }
            #expect(f == r, "divide eps=\(eps) must be bitwise identical")
        }
        for (useA, acc) in [(true, false), (false, false), (true, true), (false, true)] {
            let start = random(n * len, seed: 9)
            var f = start, r = start
            f.withUnsafeMutableBufferPointer {
                CKernelsBackend().lrpProduct(n: n, count: len, useA ? a : nil, c, scale: -0.5, $0.baseAddress!, accumulate: acc)
            }
            r.withUnsafeMutableBufferPointer {
                ReferenceKernels().lrpProduct(n: n, count: len, useA ? a : nil, c, scale: -0.5, $0.baseAddress!, accumulate: acc)
            }
            #expect(f == r, "product a=\(useA) accumulate=\(acc)")
        }
        for positive in [true, false] {
            let (f, r) = both(len) { k, y in k.clamp(count: len, z, positive: positive, y) }
            #expect(f == r)
        }
    }

    @Test("max-pool forward (argmax) and winner-take-all backward")
    func maxPool() {
        let geometries = [
            PoolGeometry(channels: 3, height: 9, width: 7, pool: Pool2d(kernel: (2, 2))),
            PoolGeometry(channels: 5, height: 10, width: 11, pool: Pool2d(kernel: (3, 3), stride: (2, 2), padding: (1, 1))),
        ]
        for (i, g) in geometries.enumerated() {
            var x = random(g.inCount, seed: UInt64(50 + i))
            x[0] = x[1]  // a tie: the first in window order wins in both
            var af = [Int32](repeating: -7, count: g.outCount), ar = af
            let (f, r) = both(g.outCount) { k, y in
                if k is CKernelsBackend { af.withUnsafeMutableBufferPointer { k.maxPoolForward(x, g, y, argmax: $0.baseAddress!) } }
                else { ar.withUnsafeMutableBufferPointer { k.maxPoolForward(x, g, y, argmax: $0.baseAddress!) } }
            }
            #expect(f == r)
            #expect(af == ar)
            let n = 4
            let R = random(n * g.outCount, seed: UInt64(60 + i))
            let (bf, br) = both(n * g.inCount) { k, Rin in k.maxPoolBackward(n: n, R, g, argmax: af, Rin) }
            expectClose(bf, br, tol: 1e-6, "max-pool backward")
            // Winner-take-all keeps the total of each map.
            let total = R.reduce(0, +), back = bf.reduce(0, +)
            #expect(abs(total - back) <= 1e-4 * max(abs(total), 1))
        }
    }

    @Test("average and adaptive average pooling with their adjoints")
    func avgPools() {
        let g = PoolGeometry(channels: 4, height: 9, width: 8, pool: Pool2d(kernel: (3, 3), stride: (2, 2), padding: (1, 1)))
        let ga = PoolGeometry(channels: 4, height: 9, width: 8, adaptiveTo: 4, 3)
        let x = random(g.inCount, seed: 70)
        var (f, r) = both(g.outCount) { k, y in k.avgPoolForward(x, g, y) }
        expectClose(f, r, tol: 1e-6, "avgpool forward")
        (f, r) = both(ga.outCount) { k, y in k.adaptiveAvgPoolForward(x, ga, y) }
        expectClose(f, r, tol: 1e-6, "adaptive forward")
        let n = 2
        let s = random(n * g.outCount, seed: 71), sa = random(n * ga.outCount, seed: 72)
        (f, r) = both(n * g.inCount) { k, c in k.avgPoolBackward(n: n, s, g, c) }
        expectClose(f, r, tol: 1e-6, "avgpool backward")
        (f, r) = both(n * ga.inCount) { k, c in k.adaptiveAvgPoolBackward(n: n, sa, ga, c) }
        expectClose(f, r, tol: 1e-6, "adaptive backward")
    }

    @Test("channel sum and patch pooling, sides not multiples of the patch", arguments: [1, 3, 4, 8])
    func patchPool(patch: Int) {
        let shape = Shape3(3, 10, 13), n = 5
        let R = random(n * shape.count, seed: 80)
        let rows = (10 + patch - 1) / patch, cols = (13 + patch - 1) / patch
        let (f, r) = both(n * rows * cols) { k, out in k.patchPool(n: n, R, shape, patch: patch, out) }
        expectClose(f, r, tol: 1e-5, "patch pool \(patch)")
        for m in 0..<n {
            let total = R[(m * shape.count)..<((m + 1) * shape.count)].reduce(0, +)
            let pooled = f[(m * rows * cols)..<((m + 1) * rows * cols)].reduce(0, +)
            #expect(abs(total - pooled) <= 1e-4 * max(abs(total), 1), "pooling keeps the total")
        }
    }

    @Test("pair product A A'^T, h = 1 and h off the block sizes", arguments: isaPaths)
    func pair(isa: Int32) throws {
        try withISA(isa) {
            for (p, q, h) in [(5, 3, 1), (64, 49, 13), (256, 256, 100)] {
                let a = random(p * h, seed: 90), b = random(q * h, seed: 91)
                let (f, r) = try both(p * q) { k, R in try k.pairProduct(p: p, q: q, h: h, a, b, R) }
                expectClose(f, r, tol: 1e-5, "pair \(p)x\(q)x\(h)")
            }
        }
    }

    @Test("BILRP_ISA in the environment caps the ISA")
    func environmentVariable() {
        let original = ProcessInfo.processInfo.environment["BILRP_ISA"]
        defer {
            if let original { setenv("BILRP_ISA", original, 1) } else { unsetenv("BILRP_ISA") }
            ck_reload_env()
        }
        setenv("BILRP_ISA", "portable", 1)
        #expect(ck_reload_env() == Int32(CK_ISA_PORTABLE))
        #expect(CKernelsBackend.activeISA == "portable")
        setenv("BILRP_ISA", "avx2", 1)
        #expect(ck_reload_env() == min(Int32(CK_ISA_AVX2), ck_isa_supported()))
        unsetenv("BILRP_ISA")
        #expect(ck_reload_env() == ck_isa_supported())
    }

    @Test("results do not depend on the thread count")
    func threadCounts() throws {
        let g = convCases[5]
        let w = random(g.outChannels * g.inChannels * 9, seed: 3), s = random(4 * g.outCount, seed: 4)
        var outs: [[Float]] = []
        let saved = CKernelsBackend.threads
        for t in [1, 2, 3] {
            CKernelsBackend.threads = t
            var c = [Float](repeating: 0, count: 4 * g.inCount)
            try c.withUnsafeMutableBufferPointer { try CKernelsBackend().convBackward(n: 4, s, g, weight: w, $0.baseAddress!) }
            outs.append(c)
        }
        CKernelsBackend.threads = saved
        #expect(outs[0] == outs[1] && outs[1] == outs[2])
    }
}

/// `make test` says which build it runs (BILRP_EXPECT_OPENMP); a bare `swift test` skips this.
@Test("the build uses OpenMP exactly when the Makefile asked for it",
      .enabled(if: ProcessInfo.processInfo.environment["BILRP_EXPECT_OPENMP"] != nil))
func openMPBuild() {
    #expect(CKernelsBackend.usesOpenMP == (ProcessInfo.processInfo.environment["BILRP_EXPECT_OPENMP"] == "1"))
}

/// Allocation failures (ckernels.h, CK_ERROR_MEMORY): forced with a per-thread limit on what the
/// kernels may allocate, every kernel that allocates reports it (the library throws
/// BiLRPError.outOfMemory) instead of aborting, and the next call without the limit is correct.
@Suite("C kernels: allocation failures are errors", .serialized)
struct AllocationFailureTests {
    /// body under an allocation limit of `bytes` for this thread's kernel calls.
    func limited<T>(_ bytes: Int, _ body: () throws -> T) rethrows -> T {
        let old = ck_set_thread_alloc_limit(bytes)
        defer { ck_set_thread_alloc_limit(old) }
        return try body()
    }

    func isOutOfMemory(_ e: any Error) -> Bool {
        if case .outOfMemory(let m)? = e as? BiLRPError { return m.contains("could not allocate") }
        return false
    }

    @Test("GEMM: CK_ERROR_MEMORY under the limit, the right product after", arguments: isaPaths)
    func gemm(isa: Int32) {
        withISA(isa) {
            let (m, n, k) = (37, 300, 129)
            let a = random(m * k, seed: 1), b = random(k * n, seed: 2)
            var c = [Float](repeating: 0, count: m * n), ref = c
            let failed = limited(64) {
                c.withUnsafeMutableBufferPointer { ck_sgemm(Int32(m), Int32(n), Int32(k), a, k, 1, b, n, 1, $0.baseAddress!, n, 0) }
            }
            #expect(failed == Int32(CK_ERROR_MEMORY))
            let ok = c.withUnsafeMutableBufferPointer {
                ck_sgemm(Int32(m), Int32(n), Int32(k), a, k, 1, b, n, 1, $0.baseAddress!, n, 0)
            }
            #expect(ok == Int32(CK_OK))
            ReferenceKernels.gemm(m: m, n: n, k: k, a, rsa: k, csa: 1, b, rsb: n, csb: 1, &ref, ldc: n, accumulate: false)
            expectClose(c, ref, tol: 1e-5, "gemm after a failed call")
        }
    }

    /// Every kernel of the Kernels protocol that allocates, under a limit of 64 bytes.
    @Test("every allocating kernel throws outOfMemory under the limit, then agrees with the reference",
          arguments: isaPaths, winogradSchedules)
    func kernels(isa: Int32, schedule: Int32) throws {
        try withISA(isa) { try withSchedule(schedule) {
            let k = CKernelsBackend()
            let g = ConvGeometry(inChannels: 16, height: 12, width: 12, outChannels: 24, kernelH: 3, kernelW: 3,
                                 padH: 1, padW: 1)
            let n = 2 * CKernelsBackend.threads + 1
            let w = random(g.outChannels * g.inChannels * 9, seed: 3, scale: 0.2)
            let x = random(g.inCount, seed: 4), z = random(g.outCount, seed: 5), R = random(n * g.outCount, seed: 6)
            let packed = k.prepareForward(weight: w, g)!
            #expect(limited(64) { k.prepareForward(weight: w, g) } == packed)  // packs in place: allocates nothing
            let u = try k.prepareBackward(weight: w, g)!
            #expect(try limited(64) { try k.prepareBackward(weight: w, g) } == u)  // transforms in place too
            let sparse = k.prepareSparseBackward(weight: w, g)!
            // (name, output count, the call on a backend)
            let calls: [(String, Int, (any Kernels, UnsafeMutablePointer<Float>) throws -> Void)] = [
                ("forward", g.outCount, { try $0.convForward(x, g, weight: w, bias: nil, $1) }),
                ("forward prepared", g.outCount, { b, y in
                    if b is CKernelsBackend { try b.convForward(x, g, prepared: packed, bias: nil, y) }
                    else { try b.convForward(x, g, weight: w, bias: nil, y) } }),
                ("backward", n * g.inCount, { try $0.convBackward(n: n, R, g, weight: w, $1) }),
                ("backward 1 map", g.inCount, { try $0.convBackward(n: 1, R, g, weight: w, $1) }),
                ("direct pass", n * g.inCount, { b, y in
                    try withPointers([w]) { try b.lrpDirect(n: n, R, z, epsilon: 0.01, g, weights: $0, inputs: [nil],
                                                            scale: 1, y, accumulate: false) } }),
                ("direct pass 1 map", g.inCount, { b, y in
                    try withPointers([w]) { try b.lrpDirect(n: 1, R, z, epsilon: 0.01, g, weights: $0, inputs: [nil],
                                                            scale: 1, y, accumulate: false) } }),
                ("Winograd term", n * g.inCount, { b, y in
                    if b is CKernelsBackend { try b.lrpTerm(n: n, R, z, epsilon: 0.01, g, prepared: u, nil, scale: 1, y,
                                                            accumulate: false) }
                    else { try withPointers([w]) { try b.lrpDirect(n: n, R, z, epsilon: 0.01, g, weights: $0,
                                                                   inputs: [nil], scale: 1, y, accumulate: false) } } }),
                ("sparse term", n * g.inCount, { b, y in
                    if b is CKernelsBackend { try b.lrpTermSparse(n: n, R, pooled: nil, z, epsilon: 0.01, g,
                                                                  prepared: sparse, nil, scale: 1, y, accumulate: false) }
                    else { try withPointers([w]) { try b.lrpDirect(n: n, R, z, epsilon: 0.01, g, weights: $0,
                                                                   inputs: [nil], scale: 1, y, accumulate: false) } } }),
                ("pair product", 9 * 11, { b, y in
                    try b.pairProduct(p: 9, q: 11, h: 40, random(9 * 40, seed: 7), random(11 * 40, seed: 8), y) }),
            ]
            for (name, count, call) in calls {
                var out = [Float](repeating: 0, count: count)
                #expect {
                    try limited(64) { try out.withUnsafeMutableBufferPointer { try call(k, $0.baseAddress!) } }
                } throws: { isOutOfMemory($0) }
                let (fast, slow) = try both(count, call)
                expectClose(fast, slow, tol: 1e-4, "\(name) after a failed call")
            }
        } }
    }

    @Test("an explanation under the limit throws outOfMemory; the next one equals one computed before")
    func explanation() throws {
        let model = try stride1Net(seed: 5)
        let ex = try Explainer(model: model, head: .randomProjection(outputs: 6, seed: 2), composite: try .named("paper-vgg"),
                               bounds: bounds)
        let x = try image(Shape3(3, 24, 24), seed: 31), x2 = try image(Shape3(3, 24, 24), seed: 32)
        let before = try ex.explain(x, x2, patch: 4)
        #expect { try limited(64) { _ = try ex.explain(x, x2, patch: 4) } } throws: { isOutOfMemory($0) }
        let after = try ex.explain(x, x2, patch: 4)
        #expect(after.relevance == before.relevance)
    }
}
