//! Tests of base URL checks (`base_url.rs`).

use super::*;

fn check(allowlist: &str, url: &str, expected: Result<&str, &str>) {
    let policy = BaseUrlPolicy::from_list(allowlist).unwrap();
    let actual = policy.normalize(url).map_err(|e| e.to_string());
    assert_eq!(actual.as_deref(), expected.map_err(|e| e.to_owned()).as_deref(), "{url}");
}

#[test]
fn normalises() {
    check("", "https://API.openai.com/v1/", Ok("https://api.openai.com/v1"));
    check("", "http://127.0.0.1:9000", Ok("http://127.0.0.1:9000"));
    check("", "https://x.example//", Ok("https://x.example"));
    check("", "https://api.openai.com./v1", Ok("https://api.openai.com/v1"));
    check("", "http://LOCALHOST.:11434/v1", Ok("http://localhost:11434/v1"));
}

#[test]
fn refuses_bad_urls() {
    check("", "ftp://x.example", Err("base_url \"ftp://x.example\" must use http or https, not \"ftp\""));
    check("", "not a url", Err("base_url \"not a url\" is not a valid URL: relative URL without a base"));
    check(
        "",
        "https://u:p@x.example",
        Err(
            "base_url \"https://u:p@x.example\" must not carry credentials, a query or a fragment; put secrets in `secret`",
        ),
    );
    check(
        "",
        "http://metadata../",
        Err("base_url \"http://metadata../\" is not a valid URL: host \"metadata..\": it has an empty label"),
    );
    for url in ["http://a..b/", "http://.metadata/"] {
        let error = BaseUrlPolicy::default().normalize(url).unwrap_err();
        assert!(matches!(error, BaseUrlError::Invalid { .. }), "{url}: {error}");
    }
}

#[test]
fn refuses_metadata_and_link_local_in_every_spelling_even_when_allowed() {
    for url in [
        "http://169.254.169.254/latest",
        "http://169.254.169.254./latest",
        "http://2852039166/",
        "http://0xA9FEA9FE/",
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://0251.0376.0251.0376/",
        "http://169.254.43518/",
        "http://metadata.google.internal",
        "http://metadata.google.internal./",
        "http://METADATA.Google.Internal/",
        "http://metadata%2egoogle%2einternal/",
        "http://ｍｅｔａｄａｔａ.google.internal/",
        "http://computeMetadata.metadata.google.internal/",
        "http://metadata.goog./",
        "http://metadata./",
        "http://metadata/",
        "http://instance-data./",
        "http://instance-data.ec2.internal/",
        "http://[fe80::1]",
        "http://[fd00:ec2::254]",
        "http://[fd20:ce::254]",
        "http://[::ffff:169.254.169.254]",
        "http://[::ffff:a9fe:a9fe]",
        "http://[::169.254.169.254]",
        "http://[64:ff9b::169.254.169.254]",
        "http://100.100.100.200",
        "http://192.0.0.192",
        "http://0/",
        "http://0.0.0.0:8080/",
        "http://[::]/",
    ] {
        let error = BaseUrlPolicy::from_list("0.0.0.0/0,::/0,*.internal,*.goog,metadata,instance-data")
            .unwrap()
            .normalize(url)
            .unwrap_err();
        assert!(matches!(error, BaseUrlError::Forbidden { .. }), "{url}: {error}");
    }
}

#[test]
fn applies_the_allowlist() {
    let list = "api.openai.com,*.openai.azure.com,10.0.0.0/8";
    check(list, "https://api.openai.com/v1", Ok("https://api.openai.com/v1"));
    check(list, "https://API.OPENAI.COM./v1", Ok("https://api.openai.com/v1"));
    check(list, "https://eu.openai.azure.com", Ok("https://eu.openai.azure.com"));
    check(list, "https://eu.openai.azure.com.", Ok("https://eu.openai.azure.com"));
    check(list, "http://10.1.2.3:8000", Ok("http://10.1.2.3:8000"));
    check(list, "http://[::ffff:10.1.2.3]:8000", Ok("http://[::ffff:a01:203]:8000"));
    check(
        list,
        "https://evil.example",
        Err(
            "base_url \"https://evil.example\": host evil.example is not in the backend allowlist (api.openai.com,*.openai.azure.com,10.0.0.0/8)",
        ),
    );
    check(
        list,
        "http://11.0.0.1",
        Err(
            "base_url \"http://11.0.0.1\": host 11.0.0.1 is not in the backend allowlist (api.openai.com,*.openai.azure.com,10.0.0.0/8)",
        ),
    );
}

fn addresses(policy: &BaseUrlPolicy, host: &str, addresses: &[&str]) -> Vec<Result<(), HostRefusal>> {
    let rule = policy.check_host(&Host::parse(host).unwrap()).unwrap();
    addresses.iter().map(|a| policy.check_address(rule, a.parse().unwrap())).collect()
}

#[test]
fn an_empty_allowlist_allows_every_address_but_the_always_refused_ones() {
    let policy = BaseUrlPolicy::default();
    let checked = addresses(
        &policy,
        "upstream.example",
        &["127.0.0.1", "::1", "10.1.2.3", "8.8.8.8", "169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254"],
    );
    let refused: Vec<bool> = checked.iter().map(Result::is_err).collect();
    assert_eq!(refused, [false, false, false, false, true, true, true]);
    assert_eq!(
        checked[4].as_ref().unwrap_err().to_string(),
        "169.254.169.254 is a link-local or cloud metadata address, which is always refused"
    );
}

#[test]
fn names_the_allowlist_does_not_name_may_use_only_its_networks() {
    let policy = BaseUrlPolicy::from_list("api.openai.com,10.0.0.0/8,fd12::/16").unwrap();
    let by_name = addresses(&policy, "api.openai.com", &["104.18.6.192", "127.0.0.1", "169.254.169.254"]);
    assert_eq!(by_name.iter().map(Result::is_err).collect::<Vec<_>>(), [false, false, true]);
    let by_network =
        addresses(&policy, "vllm.corp.example", &["10.9.8.7", "::ffff:10.9.8.7", "fd12::7", "127.0.0.1", "8.8.8.8"]);
    assert_eq!(by_network.iter().map(Result::is_err).collect::<Vec<_>>(), [false, false, false, true, true]);
    assert_eq!(
        by_network[3].as_ref().unwrap_err().to_string(),
        "127.0.0.1 is not in the backend allowlist (api.openai.com,10.0.0.0/8,fd12::/16)"
    );
    // Without network entries such a name is refused before any lookup.
    let names_only = BaseUrlPolicy::from_list("api.openai.com").unwrap();
    let refusal = names_only.check_host(&Host::parse("vllm.corp.example").unwrap()).unwrap_err();
    assert_eq!(refusal.to_string(), "vllm.corp.example is not in the backend allowlist (api.openai.com)");
    // The metadata names are refused before any lookup, in any spelling.
    for name in ["metadata.google.internal.", "METADATA.", "instance-data"] {
        let refusal = policy.check_host(&Host::Domain(name)).unwrap_err();
        assert!(matches!(refusal, HostRefusal::Forbidden { .. }), "{name}: {refusal}");
    }
}

#[test]
fn canonical_hosts() {
    let canonical = |host: Host<&str>| canonical_host(&host).map_err(|e| e.to_string());
    assert_eq!(canonical(Host::Domain("Api.OpenAI.com.")), Ok(Host::Domain("api.openai.com".to_owned())));
    assert_eq!(canonical(Host::Domain("169.254.169.254.")), Ok(Host::Ipv4(Ipv4Addr::new(169, 254, 169, 254))));
    assert_eq!(canonical(Host::Domain("0xa9fea9fe")), Ok(Host::Ipv4(Ipv4Addr::new(169, 254, 169, 254))));
    assert_eq!(canonical(Host::Domain("3com.example")), Ok(Host::Domain("3com.example".to_owned())));
    assert_eq!(canonical(Host::Ipv6("::ffff:10.0.0.1".parse().unwrap())), Ok(Host::Ipv4(Ipv4Addr::new(10, 0, 0, 1))));
    assert_eq!(
        canonical(Host::Domain("a..")),
        Err("\"a..\" is not a valid host name: it has an empty label".to_owned())
    );
}

#[test]
fn always_refused_addresses() {
    let refused = |ip: &str| is_always_refused(ip.parse().unwrap());
    for ip in [
        "0.0.0.0",
        "0.1.2.3",
        "169.254.0.1",
        "169.254.169.254",
        "100.100.100.200",
        "192.0.0.192",
        "fe80::1",
        "febf::1",
        "fd00:ec2::254",
        "fd20:ce::254",
        "::",
        "::ffff:169.254.169.254",
        "::169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "::ffff:0.0.0.0",
    ] {
        assert!(refused(ip), "{ip} must be refused");
    }
    for ip in ["127.0.0.1", "::1", "10.0.0.1", "192.168.1.1", "100.100.100.201", "fec0::1", "8.8.8.8", "2606:4700::1"] {
        assert!(!refused(ip), "{ip} must not be refused");
    }
}
