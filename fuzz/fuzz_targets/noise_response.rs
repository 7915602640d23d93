//! The server's handshake answer (51-byte response or error frame) from an untrusted socket.
#![no_main]

use control_client::noise::Initiator;
use libfuzzer_sys::fuzz_target;
use tailcfg::key::MachinePrivate;
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let machine = MachinePrivate::from_bytes([7; 32]);
    let server = MachinePrivate::from_bytes([9; 32]).public();
    let Ok((init, _msg)) = Initiator::with_ephemeral(&machine, &server, 130, Zeroizing::new([5; 32]))
    else {
        return;
    };
    let _ = init.read_response(data);
});
