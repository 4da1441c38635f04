import CKernels
import Foundation

/// An owned float buffer for the kernels: one allocation, raw pointer access, freed with the object.
/// Not public API; results are returned as `[Float]` and `Tensor`.
final class Buffer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int

    init(count: Int) {
        self.count = count
        pointer = BufferRecycler.shared.take(bytes: Swift.max(count, 1) * MemoryLayout<Float>.stride)
            .bindMemory(to: Float.self, capacity: Swift.max(count, 1))
    }

    convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { pointer.initialize(from: $0.baseAddress!, count: values.count) }
    }

    deinit { BufferRecycler.shared.give(UnsafeMutableRawPointer(pointer), bytes: Swift.max(count, 1) * MemoryLayout<Float>.stride) }

    var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
    var const: UnsafePointer<Float> { UnsafePointer(pointer) }
}

/// An owned Int32 buffer (max-pool argmax).
final class IndexBuffer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Int32>
    let bytes: Int
    init(count: Int) {
        bytes = Swift.max(count, 1) * MemoryLayout<Int32>.stride
        pointer = BufferRecycler.shared.take(bytes: bytes).bindMemory(to: Int32.self, capacity: Swift.max(count, 1))
    }
    deinit { BufferRecycler.shared.give(UnsafeMutableRawPointer(pointer), bytes: bytes) }
}

/// Large buffers freed by one explanation and handed to the next. An explanation at 224 x 224
/// allocates several hundred MB of activations, denominators and relevance blocks, and every fresh
/// page costs a fault and the kernel zeroing it (5 % of a pair's time, measured with perf). The same
/// model and input size ask for the same sizes each time, so freed buffers are kept by byte size: the
/// most recently freed one of a size is handed out first, else the cached one nearest in size,
/// resized (`ck_remap`).
///
/// Live plus cached bytes never exceed the peak of live bytes: a request it cannot serve first
/// releases cached buffers (oldest first) of at least the size asked for, so the sum only grows
/// when nothing is cached, and then it equals the live bytes. Buffers of 256 KiB and more are pages
/// mapped for them alone and unmapped on release, so what is released leaves the process; smaller
/// ones go straight to malloc, which keeps those itself. At most `limit` bytes stay cached between
/// explanations (`BILRP_BUFFER_CACHE_MB`, default 1024; 0 turns the cache off).
final class BufferRecycler: @unchecked Sendable {
    static let shared = BufferRecycler(
        limit: (ProcessInfo.processInfo.environment["BILRP_BUFFER_CACHE_MB"].flatMap(Int.init) ?? 1024) << 20)
    static let minimumBytes = 256 << 10

    private let lock = NSLock()
    private var cached: [(bytes: Int, pointer: UnsafeMutableRawPointer)] = []  // oldest first
    private var cachedBytes = 0
    let limit: Int

    init(limit: Int) { self.limit = Swift.max(0, limit) }

    func take(bytes: Int) -> UnsafeMutableRawPointer {
        guard bytes >= Self.minimumBytes else { return .allocate(byteCount: bytes, alignment: 64) }
        lock.lock()
        if let i = cached.lastIndex(where: { $0.bytes == bytes }) {
            let p = cached.remove(at: i).pointer
            cachedBytes -= bytes
            lock.unlock()
            return p
        }
        // Another size: the cached buffer nearest in size, its mapping resized (the pages it keeps
        // stay in memory without a fault; a larger one gives its tail back). A block's buffers are
        // asked for top layer first, small before large, so exact sizes alone left the next
        // explanation to unmap the large cached ones for the small requests and fault them in
        // again: VGG-16 at 224 x 224, 725 k page faults in four explanations against 617 k
        // resized, peak RSS the same (918 MB). (471 k when a grown buffer did not count against the
        // cache, but then the cache could pass the peak: 932 MB.)
        var resized: UnsafeMutableRawPointer? = nil
        var reused = 0  // cached bytes this request takes over: with the evicted, at least `bytes`
        if let i = cached.indices.min(by: { abs(cached[$0].bytes - bytes) < abs(cached[$1].bytes - bytes) }),
           let p = ck_remap(cached[i].pointer, cached[i].bytes, bytes) {
            resized = p
            reused = cached.remove(at: i).bytes
            cachedBytes -= reused
        }
        let released = evictOldest(atLeast: bytes - reused)
        lock.unlock()
        for e in released { Self.release(e.pointer, bytes: e.bytes) }
        return resized ?? Self.map(bytes: bytes)
    }

    /// Removes cached buffers, oldest first, until they make `bytes` or the cache is empty; the
    /// caller holds the lock and releases them after unlocking. So live plus cached bytes only grow
    /// when nothing is cached.
    private func evictOldest(atLeast bytes: Int) -> [(bytes: Int, pointer: UnsafeMutableRawPointer)] {
        var released: [(bytes: Int, pointer: UnsafeMutableRawPointer)] = []
        var freed = 0
        while freed < bytes, !cached.isEmpty {
            let e = cached.removeFirst()
            cachedBytes -= e.bytes
            freed += e.bytes
            released.append(e)
        }
        return released
    }

    /// Large buffers are mapped pages of their own, unmapped when released. From malloc, freed
    /// ones stayed in its heap (its mmap threshold rises to the sizes it has seen freed): when
    /// `BufferPool` began to release buffers, ResNet-50's peak RSS went 1072 -> 1103 MB from
    /// malloc, 1015 MB mapped.
    private static func map(bytes: Int) -> UnsafeMutableRawPointer {
        let p: UnsafeMutableRawPointer? = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != UnsafeMutableRawPointer(bitPattern: -1) else {
            fatalError("out of memory: mapping \(bytes) bytes failed")
        }
        return p
    }

    private static func release(_ p: UnsafeMutableRawPointer, bytes: Int) {
        if bytes >= minimumBytes { munmap(p, bytes) } else { p.deallocate() }
    }

    func give(_ p: UnsafeMutableRawPointer, bytes: Int) {
        guard bytes >= Self.minimumBytes, bytes <= limit else { Self.release(p, bytes: bytes); return }
        lock.lock()
        cached.append((bytes, p))
        cachedBytes += bytes
        let released = evictOldest(atLeast: cachedBytes - limit)
        lock.unlock()
        for e in released { Self.release(e.pointer, bytes: e.bytes) }
    }

    /// Bytes held for reuse (for tests and metrics).
    var bytesCached: Int { lock.lock(); defer { lock.unlock() }; return cachedBytes }

    /// Frees every cached buffer.
    func purge() {
        lock.lock()
        let all = cached
        cached = []
        cachedBytes = 0
        lock.unlock()
        for e in all { Self.release(e.pointer, bytes: e.bytes) }
    }
}

/// Recycles buffers within one computation (a pair's two inputs share one): every block of maps
/// needs the same sizes again, and fresh large allocations cost page faults each time (the kernel
/// zeroes every new page). `take` hands out the smallest free buffer that is large enough, so a
/// buffer may be longer than asked for: callers use the count they asked for, never `Buffer.count`.
///
/// When none is large enough, the largest free one is dropped for the new one: the pool never holds
/// more buffers than were ever taken at once. Without that, the small buffers of a graph's top
/// layers sat unused while the large layers below took new ones (ResNet-50's pair: 231 MB held for
/// 137 MB ever taken at once; now 153 MB, peak RSS 55 MB lower).
final class BufferPool {
    private var free: [Buffer] = []

    func take(_ count: Int) -> Buffer {
        var best: Int? = nil
        for (i, b) in free.enumerated() where b.count >= count && (best == nil || b.count < free[best!].count) {
            best = i
        }
        if let best { return free.remove(at: best) }
        if let largest = free.indices.max(by: { free[$0].count < free[$1].count }) { free.remove(at: largest) }
        return Buffer(count: count)
    }

    func give(_ b: Buffer) { free.append(b) }
}

/// The large scratch buffers kept between explanations for reuse (activations, denominators,
/// relevance blocks: the same sizes come back for every input of one size). Live plus held bytes
/// never exceed an explanation's own peak; at most `limit` bytes while idle (environment variable
/// `BILRP_BUFFER_CACHE_MB`, default 1024, 0 to turn it off). `purge()` frees them, for a process
/// that explains once and goes on with other work.
public enum ScratchCache {
    /// Bytes currently held for reuse.
    public static var bytes: Int { BufferRecycler.shared.bytesCached }
    /// The most bytes held while idle.
    public static var limit: Int { BufferRecycler.shared.limit }
    /// Frees every held buffer.
    public static func purge() { BufferRecycler.shared.purge() }
}
