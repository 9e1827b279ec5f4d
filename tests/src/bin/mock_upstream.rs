//! The programmable mock upstream as a process of its own (`gateway_e2e::mock` describes its behaviours):
//! `mock-upstream --addr 127.0.0.1:PORT --name NAME`. The end-to-end tests and the load benchmark run it this way.

#![allow(clippy::expect_used, clippy::print_stdout)]

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut addr, mut name) = ("127.0.0.1:0".to_owned(), "mock".to_owned());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().expect("--addr value"),
            "--name" => name = args.next().expect("--name value"),
            other => panic!("unknown argument {other}"),
        }
    }
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind the mock's address");
    println!("listening {}", listener.local_addr().expect("the bound address"));
    gateway_e2e::mock::serve(listener, &name).await.expect("serve the mock");
}
