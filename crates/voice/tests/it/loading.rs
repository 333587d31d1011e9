use crate::common;

#[test]
fn reads_every_tensor_of_the_default_voice() {
    let w = common::weights();
    // 401 initializers: the weights plus a few graph constants, none lost or merged.
    assert_eq!(w.len(), 401);
    let emb = w.get("enc_p.emb.weight").unwrap();
    assert_eq!(emb.dims(), &[256, 192]);
    // A weight-normed coupling convolution, found through the node that consumes it.
    let conv = w.get("flow.flows.6.enc.in_layers.0.weight").unwrap();
    assert_eq!(conv.dims(), &[384, 192, 5]);
    assert_eq!(
        w.get("flow.flows.0.enc.res_skip_layers.3.weight")
            .unwrap()
            .dims(),
        &[192, 192, 1]
    );
    assert_eq!(w.get("dp.flows.0.exp_neg_logs").unwrap().dims(), &[2, 1]);
    assert!(!w.names().iter().any(|n| n.starts_with("onnx::Conv")));
}

#[test]
fn reads_the_default_voice_configuration() {
    let c = common::config();
    assert_eq!(c.audio.sample_rate, 22050);
    assert_eq!(c.espeak.voice, "en-us");
    assert_eq!(c.num_speakers, 1);
    assert_eq!(c.ids_of('ə'), Some(&[59][..]));
    assert_eq!(c.inference.noise_w, 0.8);
    assert_eq!(common::model().num_speakers(), 1);
}
