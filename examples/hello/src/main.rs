//! The hello plugin: `transform` greets the `name` in its payload. Everything about gRPC, deadlines
//! and restarts is the shim's job; a plugin is just this function.

use serde_json::{Value, json};

fn main() -> std::io::Result<()> {
    airlock_sdk::run(|hook: &str, payload: Value| match hook {
        "transform" => {
            let name = payload["name"].as_str().unwrap_or("world");
            Ok(json!({"greeting": format!("hello, {name}"), "plugin": "hello"}))
        }
        other => Err(format!("hello does not implement hook {other}")),
    })
}
