/// The library's version (`bilrp --version`, the server's `bilrp_build_info`).
public enum BiLRPVersion {
    public static let string = "0.2.0"
}
