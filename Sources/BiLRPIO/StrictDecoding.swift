import Foundation

/// A JSON object key that the receiving type does not know: a request or configuration file with
/// a misspelt key (`{"settings": {"topk": 3}}`) is refused instead of silently getting defaults.
public struct UnknownKeyError: Error, Sendable, CustomStringConvertible {
    /// Where the key was found, as JSON field names (`settings.topk`).
    public var path: String
    public var known: [String]

    public var description: String {
        "unknown field '\(path)' (expected one of: \(known.joined(separator: ", ")))"
    }
}

/// Any JSON key, for listing the keys an object holds.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension Decoder {
    /// Throws `UnknownKeyError` for the first key of this object that `Keys` does not name, and,
    /// unless `nulls`, a `valueNotFound` for a key given as null (a request body says a value or
    /// leaves the key out: `"rules": null` is not the loaded rules).
    public func rejectUnknownKeys<Keys: CodingKey & CaseIterable>(_: Keys.Type, nulls: Bool = true) throws {
        let c = try container(keyedBy: AnyKey.self)
        let known = Keys.allCases.map(\.stringValue)
        for key in c.allKeys.sorted(by: { $0.stringValue < $1.stringValue }) {
            if !known.contains(key.stringValue) {
                let path = (codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue } + [key.stringValue])
                    .joined(separator: ".").replacingOccurrences(of: ".[", with: "[")
                throw UnknownKeyError(path: path, known: known)
            }
            if !nulls, try c.decodeNil(forKey: key) {
                throw DecodingError.valueNotFound(Any.self, .init(codingPath: codingPath + [key], debugDescription: "null"))
            }
        }
    }
}

/// A readable message for a JSON decoding failure: what, and where, in JSON field names.
public func describeDecodingError(_ error: any Error) -> String {
    if let u = error as? UnknownKeyError { return u.description }
    guard let e = error as? DecodingError else { return "\(error)" }
    func path(_ c: [any CodingKey]) -> String {
        c.isEmpty ? "the body" : c.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
            .replacingOccurrences(of: ".[", with: "[")
    }
    func kind(_ t: Any.Type) -> String {
        switch t {
        case is Int.Type: return "an integer"
        case is Double.Type, is Float.Type: return "a number"
        case is String.Type: return "a string"
        case is Bool.Type: return "true or false"
        default: return String(describing: t).hasPrefix("Array") ? "an array" : "an object"
        }
    }
    switch e {
    case let .typeMismatch(t, c): return "\(path(c.codingPath)) has the wrong type (expected \(kind(t)))"
    case let .valueNotFound(t, c):
        if t == Any.self { return "\(path(c.codingPath)) is null (give a value or leave the field out)" }
        return "\(path(c.codingPath)) is null (expected \(kind(t)))"
    case let .keyNotFound(k, c):
        return "missing field '\((c.codingPath + [k]).map(\.stringValue).joined(separator: "."))'"
    case let .dataCorrupted(c):
        // A number that does not fit the field (2.5 for an integer) is not malformed JSON.
        if !c.codingPath.isEmpty, c.debugDescription.contains("does not fit") {
            return "\(path(c.codingPath)) must be an integer (\(c.debugDescription))"
        }
        if !c.codingPath.isEmpty { return "\(path(c.codingPath)) is not valid: \(c.debugDescription)" }
        return "malformed JSON: \(c.underlyingError.map { "\($0)" } ?? c.debugDescription)"
    @unknown default: return "malformed request body"
    }
}
