import CKernels

/// P cells of `cellHeight` x `cellWidth` pixels laid out in a mosaic image, `gridColumns` cells a
/// row: cell p's pixel (i, j) stands for map position (originY[p] + i, originX[p] + j), possibly
/// outside the map (such pixels hold 0). The patch side of a mixed-mode explanation keeps one
/// vector per patch in its cell (see `ck_cells` in ckernels.h and `Explainer.patchSide`).
public struct CellLayout: Sendable, Equatable {
    public var gridColumns: Int, cellHeight: Int, cellWidth: Int
    public var originY: [Int32], originX: [Int32]

    public init(gridColumns: Int, cellHeight: Int, cellWidth: Int, originY: [Int32], originX: [Int32]) {
        precondition(originY.count == originX.count && gridColumns > 0, "one origin per cell")
        self.gridColumns = gridColumns; self.cellHeight = cellHeight; self.cellWidth = cellWidth
        self.originY = originY; self.originX = originX
    }

    public var count: Int { originY.count }
    public var mosaicHeight: Int { (count + gridColumns - 1) / gridColumns * cellHeight }
    public var mosaicWidth: Int { gridColumns * cellWidth }
    /// Floats of a mosaic of `channels` channels.
    public func mosaicCount(channels: Int) -> Int { channels * mosaicHeight * mosaicWidth }
    /// Index in a channel's mosaic plane of cell p's pixel (i, j).
    public func index(_ p: Int, _ i: Int, _ j: Int) -> Int {
        (p / gridColumns * cellHeight + i) * mosaicWidth + p % gridColumns * cellWidth + j
    }

    /// Calls body with the C view of this layout.
    func withC<R>(_ body: (UnsafePointer<ck_cells>) throws -> R) rethrows -> R {
        try originY.withUnsafeBufferPointer { oy in
            try originX.withUnsafeBufferPointer { ox in
                var l = ck_cells(P: Int32(count), gc: Int32(gridColumns), ch: Int32(cellHeight), cw: Int32(cellWidth),
                                 oy: oy.baseAddress, ox: ox.baseAddress)
                return try body(&l)
            }
        }
    }
}
