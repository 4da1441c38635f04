import BiLRP
import Foundation

/// A safetensors file (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
/// length, a JSON header mapping names to dtype, shape and byte offsets, then the raw data.
/// float32, float16 and bfloat16 tensors are read as Float; float64 too (narrowed).
public struct SafetensorsFile: TensorSource, Sendable {
    public struct Entry: Sendable {
        public var dtype: String
        public var shape: [Int]
        var begin: Int, end: Int
    }

    public let entries: [String: Entry]
    public let metadata: [String: String]
    let data: Data
    let dataStart: Int

    public init(path: String) throws {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw BiLRPError.io("cannot read safetensors file '\(path)'")
        }
        try self.init(data: d, name: path)
    }

    public init(data: Data, name: String = "safetensors data") throws {
        func fail(_ why: String) -> BiLRPError { .io("\(name): not a valid safetensors file: \(why)") }
        guard data.count >= 8 else { throw fail("shorter than its 8-byte header length") }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(data[data.startIndex + i]) << (8 * UInt64(i)) }
        guard n <= UInt64(data.count - 8) else { throw fail("header length \(n) exceeds the file") }
        let headerData = data.subdata(in: data.startIndex + 8..<data.startIndex + 8 + Int(n))
        guard let json = try? JSONSerialization.jsonObject(with: headerData) as? [String: Any] else {
            throw fail("the header is not a JSON object")
        }
        var entries: [String: Entry] = [:]
        var metadata: [String: String] = [:]
        let payload = data.count - 8 - Int(n)
        for (key, value) in json {
            if key == "__metadata__" {
                for (k, v) in (value as? [String: Any]) ?? [:] { metadata[k] = "\(v)" }
                continue
            }
            guard let e = value as? [String: Any], let dtype = e["dtype"] as? String,
                let shape = e["shape"] as? [Int], let offs = e["data_offsets"] as? [Int], offs.count == 2
            else { throw fail("entry '\(key)' lacks dtype, shape or data_offsets") }
            guard let size = SafetensorsFile.byteSize(dtype) else {
                throw fail("tensor '\(key)' has dtype \(dtype); supported: F32, F16, BF16, F64, and as numbers I64, I32, I16, I8, U8, BOOL")
            }
            guard offs[0] >= 0, offs[0] <= offs[1], offs[1] <= payload,
                offs[1] - offs[0] == shape.reduce(1, *) * size
            else { throw fail("tensor '\(key)' has data offsets \(offs) that do not match its shape \(shape) or the file size") }
            entries[key] = Entry(dtype: dtype, shape: shape, begin: offs[0], end: offs[1])
        }
        self.entries = entries
        self.metadata = metadata
        self.data = data
        self.dataStart = data.startIndex + 8 + Int(n)
    }

    static func byteSize(_ dtype: String) -> Int? {
        switch dtype {
        case "F32": return 4
        case "F16", "BF16": return 2
        case "F64", "I64": return 8
        case "I32": return 4
        case "I16": return 2
        case "I8", "U8", "BOOL": return 1
        default: return nil
        }
    }

    public var names: [String] { entries.keys.sorted() }

    public func tensor(named name: String) throws -> Tensor? {
        guard let e = entries[name] else { return nil }
        let count = e.shape.reduce(1, *)
        var out = [Float](repeating: 0, count: count)
        data.withUnsafeBytes { raw in
            let base = raw.baseAddress!.advanced(by: dataStart - data.startIndex + e.begin)
            for i in 0..<count {
                switch e.dtype {
                case "F32": out[i] = Float(bitPattern: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self).littleEndian)
                case "F64": out[i] = Float(Double(bitPattern: base.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self).littleEndian))
                case "I64": out[i] = Float(Int64(littleEndian: base.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)))
                case "I32": out[i] = Float(Int32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)))
                case "I16": out[i] = Float(Int16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)))
                case "I8": out[i] = Float(base.load(fromByteOffset: i, as: Int8.self))
                case "U8", "BOOL": out[i] = Float(base.load(fromByteOffset: i, as: UInt8.self))
                case "BF16":
                    let bits = base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian
                    out[i] = Float(bitPattern: UInt32(bits) << 16)
                default:
                    let bits = base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian
                    out[i] = Float(Float16(bitPattern: bits))
                }
            }
        }
        return try Tensor(shape: e.shape, data: out)
    }

    public enum DType: String, Sendable { case f32 = "F32", f16 = "F16", bf16 = "BF16" }

    /// Serializes tensors (sorted by name) in the given dtype; bf16 rounds to nearest even.
    public static func encode(_ tensors: [String: Tensor], dtype: DType = .f32, metadata: [String: String] = [:]) throws -> Data {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var payload = Data()
        for name in tensors.keys.sorted() {
            let t = tensors[name]!
            let begin = payload.count
            for v in t.data {
                switch dtype {
                case .f32: withUnsafeBytes(of: v.bitPattern.littleEndian) { payload.append(contentsOf: $0) }
                case .f16: withUnsafeBytes(of: Float16(v).bitPattern.littleEndian) { payload.append(contentsOf: $0) }
                case .bf16:
                    let b = v.bitPattern
                    let rounded = UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
                    withUnsafeBytes(of: (v.isNaN ? 0x7FC0 : rounded).littleEndian) { payload.append(contentsOf: $0) }
                }
            }
            header[name] = ["dtype": dtype.rawValue, "shape": t.shape, "data_offsets": [begin, payload.count]]
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (json.count + 8) % 8 != 0 { json.append(0x20) }
        var out = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        out.append(payload)
        return out
    }

    /// Writes tensors to a file atomically (a temporary file renamed into place).
    public static func write(_ tensors: [String: Tensor], to path: String, dtype: DType = .f32,
                             metadata: [String: String] = [:]) throws {
        try AtomicFile.write(try encode(tensors, dtype: dtype, metadata: metadata), to: path)
    }
}

/// Writes files so that a reader sees the old file or the whole new one, never a part.
public enum AtomicFile {
    public static func write(_ data: Data, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        do {
            try data.write(to: url, options: .atomic)
        } catch {
            throw BiLRPError.io("cannot write '\(path)': \(error.localizedDescription)")
        }
    }
}
