/// An owned float buffer for the kernels: one allocation, raw pointer access, freed with the object.
/// Not public API; results are returned as `[Float]` and `Tensor`.
final class Buffer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int

    init(count: Int) {
        self.count = count
        pointer = .allocate(capacity: Swift.max(count, 1))
    }

    convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { pointer.initialize(from: $0.baseAddress!, count: values.count) }
    }

    deinit { pointer.deallocate() }

    var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
    var const: UnsafePointer<Float> { UnsafePointer(pointer) }
}

/// An owned Int32 buffer (max-pool argmax).
final class IndexBuffer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Int32>
    init(count: Int) { pointer = .allocate(capacity: Swift.max(count, 1)) }
    deinit { pointer.deallocate() }
}

/// Recycles buffers within one computation (a pair's two inputs share one): every block of maps
/// needs the same sizes again, and fresh large allocations cost page faults each time (the kernel
/// zeroes every new page). `take` hands out the smallest free buffer that is large enough, so a
/// buffer may be longer than asked for: callers use the count they asked for, never `Buffer.count`.
final class BufferPool {
    private var free: [Buffer] = []

    func take(_ count: Int) -> Buffer {
        var best: Int? = nil
        for (i, b) in free.enumerated() where b.count >= count && (best == nil || b.count < free[best!].count) {
            best = i
        }
        if let best { return free.remove(at: best) }
        return Buffer(count: count)
    }

    func give(_ b: Buffer) { free.append(b) }
}
