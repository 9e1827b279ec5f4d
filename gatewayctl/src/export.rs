//! `export`: the server's configuration as the documents `apply` reads, in dependency order.
//!
//! Secrets cannot be read back. A backend whose secret is a reference (`{"ref": "env:NAME"}`) is exported with it;
//! a backend whose secret is a sealed literal is exported without `secret`, which `apply` reads as "keep the
//! stored secret", with a comment saying so (the fingerprint shows which secret that is).

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::client::{AdminClient, ClientError};
use crate::kinds::{self, Kind};
use crate::plan::yaml;

pub async fn export(client: &AdminClient) -> Result<String, ClientError> {
    let mut out = String::from("# Exported by gatewayctl; `gatewayctl apply -f` takes it back unchanged.\n");
    for kind in Kind::ALL {
        for view in client.list_all(&format!("/{}", kind.collection())).await? {
            let secret = view.pointer("/meta/secret").cloned();
            let mut spec = kind.canonical(kinds::spec_of_view(view)).map_err(|e| {
                ClientError::Unexpected(format!("a stored {} does not parse: {e}", kind.document_name()))
            })?;
            out.push_str("---\n");
            match secret {
                Some(reference) if reference.get("ref").is_some() => {
                    if let Some(object) = spec.as_object_mut() {
                        object.insert("secret".to_owned(), reference);
                    }
                }
                Some(sealed) => {
                    let fingerprint = sealed.get("fingerprint").and_then(Value::as_str).unwrap_or("unknown");
                    let _ = writeln!(
                        out,
                        "# secret: a sealed literal ({fingerprint}), not exportable; omitted here, so apply keeps it"
                    );
                }
                None => {}
            }
            out.push_str(&yaml(&json!({"kind": kind.document_name(), "spec": spec})));
        }
    }
    Ok(out)
}
