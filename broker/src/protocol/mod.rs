//! Protocol sessions.
pub mod amqp;
pub mod mqtt;

/// One step of a session's output: writes some of `out` (`Some(bytes written)`), or, when `out`
/// is empty, flushes the stream (`None`). TLS and WebSocket streams may hold written bytes until
/// flushed; over TCP the flush is a no-op. Cancel-safe as `write_buf` and `flush` are.
pub(crate) async fn write_or_flush<W>(
    writer: &mut W,
    out: &mut bytes::BytesMut,
) -> std::io::Result<Option<usize>>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if out.is_empty() {
        writer.flush().await.map(|()| None)
    } else {
        writer.write_buf(out).await.map(Some)
    }
}
