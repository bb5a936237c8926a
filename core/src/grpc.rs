//! gRPC status codes by their canonical names (`PERMISSION_DENIED`, ...), as plugins see them in
//! host-call errors and users in messages. Keyed by the code's number from the gRPC spec, so this
//! crate needs no gRPC library: `code_name(status.code() as i32)`.

/// The canonical name of gRPC status code `code`; `"UNKNOWN"` for a number outside the spec.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_grpc_spec() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(2), "UNKNOWN");
        assert_eq!(code_name(7), "PERMISSION_DENIED");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
