import BiLRP
import Foundation

/// NumPy's .npy format, version 1.0 to 3.0: float32 little-endian ('<f4'), C order. Other dtypes,
/// Fortran order and truncated files are errors that say so.
public enum NPY {
    public static func read(path: String) throws -> Tensor {
        guard let d = FileManager.default.contents(atPath: path) else { throw BiLRPError.io("cannot read NPY file '\(path)'") }
        return try decode(d, name: path)
    }

    public static func decode(_ data: Data, name: String = "NPY data") throws -> Tensor {
        let bytes = [UInt8](data)
        func fail(_ why: String) -> BiLRPError { .io("\(name): \(why)") }
        guard bytes.count >= 10, bytes[0] == 0x93, Array(bytes[1..<6]) == Array("NUMPY".utf8) else {
            throw fail("not an NPY file (bad magic)")
        }
        let major = bytes[6]
        let headerLength: Int
        let start: Int
        if major == 1 {
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8; start = 10
        } else if major == 2 || major == 3 {
            guard bytes.count >= 12 else { throw fail("truncated NPY header") }
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24; start = 12
        } else { throw fail("unsupported NPY version \(major)") }
        guard bytes.count >= start + headerLength else { throw fail("truncated NPY header") }
        guard let header = String(bytes: bytes[start..<start + headerLength], encoding: .utf8) else {
            throw fail("NPY header is not text")
        }
        func field(_ key: String) -> String? {
            guard let r = header.range(of: "'\(key)':") else { return nil }
            return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
        guard let descr = field("descr"), let fortran = field("fortran_order"), let shapeText = field("shape") else {
            throw fail("NPY header lacks descr, fortran_order or shape")
        }
        guard descr.hasPrefix("'<f4'") || descr.hasPrefix("'f4'") else {
            let d = descr.split(separator: ",").first.map(String.init) ?? descr
            throw fail("unsupported dtype \(d): only float32 ('<f4') is read")
        }
        guard fortran.hasPrefix("False") else { throw fail("Fortran-order arrays are not supported (save with C order)") }
        guard let open = shapeText.firstIndex(of: "("), let close = shapeText.firstIndex(of: ")") else {
            throw fail("cannot parse shape in NPY header")
        }
        let dims = shapeText[shapeText.index(after: open)..<close].split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        var shape: [Int] = []
        for d in dims {
            guard let v = Int(d), v >= 0 else { throw fail("bad dimension '\(d)' in NPY shape") }
            shape.append(v)
        }
        let count = shape.reduce(1, *)
        let begin = start + headerLength
        guard bytes.count - begin >= count * 4 else {
            throw fail("truncated: shape \(shape) needs \(count * 4) bytes of data, found \(bytes.count - begin)")
        }
        var values = [Float](repeating: 0, count: count)
        bytes.withUnsafeBytes { raw in
            for i in 0..<count {
                values[i] = Float(bitPattern: raw.loadUnaligned(fromByteOffset: begin + 4 * i, as: UInt32.self).littleEndian)
            }
        }
        return try Tensor(shape: shape, data: values)
    }

    public static func encode(_ t: Tensor) -> Data {
        let shape = t.shape.count == 1 ? "(\(t.shape[0]),)" : "(" + t.shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': \(shape), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var out = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
        let n = UInt16(header.utf8.count)
        out.append(contentsOf: [UInt8(n & 0xFF), UInt8(n >> 8)])
        out.append(contentsOf: Array(header.utf8))
        for v in t.data { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        return out
    }

    /// Writes atomically.
    public static func write(_ t: Tensor, to path: String) throws {
        try AtomicFile.write(encode(t), to: path)
    }
}
