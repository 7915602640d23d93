//! HTTP/1.1 requests on the LocalAPI socket, from any local user: heads, bodies, chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let mut r = tokio::io::BufReader::new(data);
        // Keep reading requests until the input is used up or one is refused.
        for _ in 0..16 {
            match localapi::http::read_request(&mut r).await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    });
});
