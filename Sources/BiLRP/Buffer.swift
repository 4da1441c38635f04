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

/// Recycles buffers by size within one computation: the relevance blocks of every layer have the
/// same sizes in every block of maps, and fresh large allocations cost page faults each time.
final class BufferPool {
    private var free: [Int: [Buffer]] = [:]

    func take(_ count: Int) -> Buffer {
        if var list = free[count], let b = list.popLast() {
            free[count] = list
            return b
        }
        return Buffer(count: count)
    }

    func give(_ b: Buffer) { free[b.count, default: []].append(b) }
}
