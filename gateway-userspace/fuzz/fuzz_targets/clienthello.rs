//! Fuzzes `gateway_clienthello::parse` (the passthrough ClientHello parser): no panic on any input, and a complete answer is stable — parsing
//! exactly the bytes the ClientHello occupied gives the same hello, and every shorter prefix is either
//! incomplete or rejected (never a different server name).
#![no_main]
use gateway_clienthello as clienthello;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(clienthello::MAX_BUFFERED + 64)];
    if let Ok(Some(hello)) = clienthello::parse(data) {
        assert!(hello.records_len <= data.len());
        assert_eq!(
            clienthello::parse(&data[..hello.records_len]),
            Ok(Some(hello.clone()))
        );
        for cut in [hello.records_len / 2, hello.records_len.saturating_sub(1)] {
            if let Ok(Some(other)) = clienthello::parse(&data[..cut]) {
                panic!("prefix of {cut} bytes completed with {other:?}, the whole with {hello:?}");
            }
        }
    }
});
