import BiLRP
import Foundation

/// The OpenAPI 3.1 document of the service: `Resources/openapi.yaml`, served as is at
/// GET /openapi.yaml, validated and exercised against a live server by `make test`.
enum OpenAPIDocument {
    static func text() throws -> String {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"),
              let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw ServiceError(500, "the OpenAPI document is missing from the server's resources")
        }
        return text
    }
}
