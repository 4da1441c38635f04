import Foundation

/// The parts of a `multipart/form-data` body (RFC 7578): name, optional filename, bytes. Only what
/// the routes need: images as file parts, settings as a JSON text part, flags as text parts.
struct FormPart {
    var name: String
    var filename: String?
    var data: Data
}

enum Multipart {
    /// The boundary of a `multipart/form-data` content type, or nil for any other type.
    static func boundary(contentType: String?) -> String? {
        guard let ct = contentType, ct.lowercased().hasPrefix("multipart/form-data") else { return nil }
        for param in ct.split(separator: ";").dropFirst() {
            let kv = param.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0].lowercased() == "boundary" {
                return kv[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            }
        }
        return nil
    }

    static func parse(_ body: Data, boundary: String) throws -> [FormPart] {
        let delimiter = Data("--\(boundary)".utf8)
        let crlf = Data("\r\n".utf8), headerEnd = Data("\r\n\r\n".utf8)
        guard var cursor = body.range(of: delimiter)?.upperBound else {
            throw ServiceError(400, "multipart body has no part with the declared boundary")
        }
        var parts: [FormPart] = []
        while true {
            // After a delimiter: "--" ends the body, CRLF starts a part.
            if body[cursor...].starts(with: Data("--".utf8)) { break }
            guard body[cursor...].starts(with: crlf) else { throw ServiceError(400, "malformed multipart delimiter") }
            cursor += 2
            guard let hEnd = body.range(of: headerEnd, in: cursor..<body.endIndex) else {
                throw ServiceError(400, "multipart part without a header end")
            }
            let headers = String(decoding: body[cursor..<hEnd.lowerBound], as: UTF8.self)
            guard let next = body.range(of: crlf + delimiter, in: hEnd.upperBound..<body.endIndex) else {
                throw ServiceError(400, "multipart body is truncated (no closing boundary)")
            }
            var name: String?, filename: String?
            for line in headers.components(separatedBy: "\r\n") where line.lowercased().hasPrefix("content-disposition:") {
                for item in line.split(separator: ";").dropFirst() {
                    let kv = item.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
                    guard kv.count == 2 else { continue }
                    let value = kv[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                    if kv[0] == "name" { name = value } else if kv[0] == "filename" { filename = value }
                }
            }
            guard let name else { throw ServiceError(400, "multipart part without a name") }
            parts.append(FormPart(name: name, filename: filename, data: Data(body[hEnd.upperBound..<next.lowerBound])))
            cursor = next.upperBound
        }
        return parts
    }

    /// Form parts as the JSON request the routes take: file parts become {"image": base64},
    /// a `settings` part is parsed as JSON, `pictures` and `matrix` as booleans; repeated names
    /// (batch `items`) become arrays.
    static func json(_ parts: [FormPart]) throws -> Data {
        var object: [String: Any] = [:]
        for p in parts {
            let value: Any
            switch p.name {
            case "settings":
                guard let v = try? JSONSerialization.jsonObject(with: p.data) else {
                    throw ServiceError(400, "the settings part is not JSON")
                }
                value = v
            case "pictures", "matrix":
                value = String(decoding: p.data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "true"
            case "image":
                value = p.data.base64EncodedString()
            default:
                // An input: a file (image) or a text part holding a factor id.
                value = p.filename != nil ? ["image": p.data.base64EncodedString()]
                    : ["factors": String(decoding: p.data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)]
            }
            if p.name == "items" {
                object["items"] = ((object["items"] as? [Any]) ?? []) + [value]
            } else {
                object[p.name] = value
            }
        }
        return try JSONSerialization.data(withJSONObject: object)
    }
}
