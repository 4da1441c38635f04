import Foundation
import MultipartKit
import NIOCore

/// One part of a `multipart/form-data` body (RFC 7578): its name, optional filename, bytes.
struct FormPart {
    var name: String
    var filename: String?
    var data: Data
}

public enum Multipart {
    /// The boundary of a `multipart/form-data` content type, or nil for any other type.
    public static func boundary(contentType: String?) -> String? {
        guard let ct = contentType else { return nil }
        let (media, params) = parameters(ct)
        guard media.lowercased() == "multipart/form-data" else { return nil }
        return params["boundary"]
    }

    /// A header value's first token and its `; name=value` parameters: names case-insensitive,
    /// values quoted (with backslash escapes, and `;` inside quotes) or not, and RFC 8187's
    /// `name*=UTF-8''percent-encoded` form taking precedence over the plain one.
    public static func parameters(_ value: String) -> (String, [String: String]) {
        var items: [String] = []
        var current = "", quoted = false, escaped = false
        for ch in value {
            if escaped { current.append(ch); escaped = false; continue }
            if quoted && ch == "\\" { escaped = true; continue }
            if ch == "\"" { quoted.toggle(); continue }
            if ch == ";" && !quoted { items.append(current); current = ""; continue }
            current.append(ch)
        }
        items.append(current)
        var params: [String: String] = [:]
        var extended: [String: String] = [:]
        for item in items.dropFirst() {
            guard let eq = item.firstIndex(of: "=") else { continue }
            let name = item[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            let v = item[item.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if name.hasSuffix("*") {
                // charset'language'percent-encoded
                let fields = v.split(separator: "'", maxSplits: 2, omittingEmptySubsequences: false)
                if fields.count == 3, let decoded = String(fields[2]).removingPercentEncoding {
                    extended[String(name.dropLast())] = decoded
                }
            } else {
                params[name] = v
            }
        }
        params.merge(extended) { $1 }
        return (items[0].trimmingCharacters(in: .whitespaces), params)
    }

    /// The parts of a body, framed by multipart-kit's parser.
    static func parse(_ body: Data, boundary: String) throws -> [FormPart] {
        guard body.range(of: Data("--\(boundary)--".utf8)) != nil else {
            throw ServiceError(400, "multipart body is truncated or has no closing boundary '--\(boundary)--'")
        }
        let parser = MultipartParser(boundary: boundary)
        var parts: [FormPart] = []
        var headers: [(String, String)] = []
        var data = Data()
        var failure: String?
        parser.onHeader = { headers.append(($0, $1)) }
        parser.onBody = { buffer in data.append(contentsOf: buffer.readableBytesView) }
        parser.onPartComplete = {
            let disposition = headers.first { $0.0.lowercased() == "content-disposition" }?.1
            let (kind, p) = parameters(disposition ?? "")
            if kind.lowercased() != "form-data" || p["name"] == nil {
                failure = failure ?? "a multipart part has no Content-Disposition: form-data with a name"
            } else {
                parts.append(FormPart(name: p["name"]!, filename: p["filename"], data: data))
            }
            headers = []
            data = Data()
        }
        do { try parser.execute(ByteBuffer(bytes: body)) } catch {
            throw ServiceError(400, "malformed multipart body: \(error)")
        }
        if let failure { throw ServiceError(400, failure) }
        guard !parts.isEmpty else { throw ServiceError(400, "multipart body has no part with the declared boundary") }
        return parts
    }

    /// Form parts as the JSON request the routes take: file parts become {"image": base64},
    /// a `settings` part is parsed as JSON, `pictures` and `matrix` as true or false; repeated
    /// names (batch `items`) become arrays. A name given twice otherwise is an error.
    static func json(_ parts: [FormPart]) throws -> Data {
        var object: [String: Any] = [:]
        for p in parts {
            let text = String(decoding: p.data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            let value: Any
            switch p.name {
            case "settings":
                guard let v = try? JSONSerialization.jsonObject(with: p.data) else {
                    throw ServiceError(400, "the settings part is not JSON")
                }
                value = v
            case "pictures", "matrix":
                guard text == "true" || text == "false" else {
                    throw ServiceError(400, "the \(p.name) part must be true or false (got '\(text.prefix(40))')")
                }
                value = text == "true"
            case "image":
                value = p.data.base64EncodedString()
            default:
                // An input: a file (image) or a text part holding a factor id.
                value = p.filename != nil ? ["image": p.data.base64EncodedString()] : ["factors": text]
            }
            if p.name == "items" {
                object["items"] = ((object["items"] as? [Any]) ?? []) + [value]
            } else {
                guard object[p.name] == nil else { throw ServiceError(400, "the multipart part '\(p.name)' is given twice") }
                object[p.name] = value
            }
        }
        return try JSONSerialization.data(withJSONObject: object)
    }
}
