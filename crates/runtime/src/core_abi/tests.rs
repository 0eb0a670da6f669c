use super::*;

/// A guest as wit-bindgen 0.2 builds one: one page of memory and a bump allocator that
/// hands out aligned blocks from 1024 up, with "hello" and two bytes that are not UTF-8 at 16.
const GUEST: &str = r#"
    (module
      (memory (export "memory") 1)
      (global $next (mut i32) (i32.const 1024))
      (func (export "canonical_abi_realloc") (param i32 i32 i32 i32) (result i32)
        (local $ptr i32)
        (local.set $ptr
          (i32.and
            (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
            (i32.sub (i32.const 0) (local.get 2))))
        (global.set $next (i32.add (local.get $ptr) (local.get 3)))
        (local.get $ptr))
      (data (i32.const 16) "hello\ff\fe"))
"#;

/// Where [`GUEST`]'s allocator starts: everything it gives is at or past it.
const HEAP: i32 = 1024;

/// A return area the tests' results are written to, below the heap.
const RET: i32 = 256;

async fn instance(wat: &str) -> (Store<()>, Instance) {
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
    let mut store = Store::new(&engine, ());
    let instance = Instance::new_async(&mut store, &module, &[]).await.unwrap();
    (store, instance)
}

async fn instantiate(wat: &str) -> (Store<()>, Abi) {
    let (mut store, instance) = instance(wat).await;
    let abi = Abi::of_instance(&mut store, &instance).unwrap();
    (store, abi)
}

async fn guest() -> (Store<()>, Abi) {
    instantiate(GUEST).await
}

fn word(area: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(area[at..at + 4].try_into().unwrap())
}

fn is_out_of_bounds(error: &wasmtime::Error) -> bool {
    error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::MemoryOutOfBounds)
}

#[tokio::test]
async fn reads_bytes_and_strings_from_guest_memory() {
    let (store, abi) = guest().await;
    assert_eq!(abi.bytes(&store, 16, 5).unwrap(), b"hello");
    assert_eq!(abi.string(&store, 16, 5).unwrap(), "hello");
    assert_eq!(abi.string(&store, 16, 0).unwrap(), "");
}

#[tokio::test]
async fn a_pointer_or_length_outside_memory_traps() {
    let (store, abi) = guest().await;
    let page = 65536;
    // Ends one byte past the memory.
    let error = abi.bytes(&store, page - 4, 5).unwrap_err();
    assert!(is_out_of_bounds(&error), "{error:?}");
    // A negative pointer is an address near 4 GiB, not an index from the end.
    assert!(is_out_of_bounds(&abi.bytes(&store, -1, 2).unwrap_err()));
    // A negative length is a huge one: it must not wrap around to a small range.
    assert!(is_out_of_bounds(&abi.string(&store, 16, -1).unwrap_err()));
    assert!(is_out_of_bounds(
        &abi.pairs(&store, page - 8, 1).unwrap_err()
    ));
    // The last byte is still in bounds.
    assert_eq!(abi.bytes(&store, page - 1, 1).unwrap(), [0]);
}

#[tokio::test]
async fn a_string_that_is_not_utf8_is_an_error() {
    let (store, abi) = guest().await;
    let error = abi.string(&store, 16, 7).unwrap_err();
    assert!(error.to_string().contains("not UTF-8"), "{error}");
    // The same bytes are fine as bytes.
    assert_eq!(abi.bytes(&store, 16, 7).unwrap(), b"hello\xff\xfe");
}

#[tokio::test]
async fn give_copies_into_memory_the_guest_allocated() {
    let (mut store, abi) = guest().await;
    let first = abi.give(&mut store, 1, b"abc").await.unwrap();
    let second = abi.give(&mut store, 4, b"defgh").await.unwrap();
    assert_eq!(first, HEAP);
    // The guest's allocator placed it: aligned, after the first block.
    assert_eq!(second, HEAP + 4);
    assert_eq!(abi.bytes(&store, first, 3).unwrap(), b"abc");
    assert_eq!(abi.bytes(&store, second, 5).unwrap(), b"defgh");
}

#[tokio::test]
async fn give_pairs_reads_back_as_the_same_pairs() {
    let (mut store, abi) = guest().await;
    let pairs = vec![
        ("content-type".to_string(), "text/plain".to_string()),
        ("x-empty".to_string(), String::new()),
        ("x-ünïcode".to_string(), "värde".to_string()),
    ];
    let (ptr, len) = abi.give_pairs(&mut store, &pairs).await.unwrap();
    assert_eq!(len, 3);
    assert_eq!(ptr % 4, 0, "a list of pairs is 4-aligned");
    assert_eq!(abi.pairs(&store, ptr, len).unwrap(), pairs);
}

#[tokio::test]
async fn give_without_the_guests_allocator_is_an_error() {
    let (mut store, abi) = instantiate(r#"(module (memory (export "memory") 1))"#).await;
    let error = abi.give(&mut store, 1, b"x").await.unwrap_err();
    assert!(
        error.to_string().contains("canonical_abi_realloc"),
        "{error}"
    );
}

#[tokio::test]
async fn a_module_without_memory_has_no_abi() {
    let (mut store, instance) = instance("(module)").await;
    assert!(Abi::of_instance(&mut store, &instance).is_err());
}

/// Writes `value` at [`RET`] over a return area filled with 0xaa; the area's 32 bytes after.
async fn ret(value: Ret) -> (Store<()>, Abi, Vec<u8>) {
    let (mut store, abi) = guest().await;
    abi.memory.data_mut(&mut store)[RET as usize..RET as usize + 32].fill(0xaa);
    abi.ret(&mut store, RET, value).await.unwrap();
    let area = abi.bytes(&store, RET, 32).unwrap();
    (store, abi, area)
}

#[tokio::test]
async fn ret_ok_writes_tag_zero_and_the_payload_at_4() {
    let (_, _, area) = ret(Ret::Unit).await;
    assert_eq!(area[0], 0);
    let (_, _, area) = ret(Ret::Handle(7)).await;
    assert_eq!((area[0], word(&area, 4)), (0, 7));
    let (_, _, area) = ret(Ret::Bool(true)).await;
    assert_eq!((area[0], area[4]), (0, 1));
    // A result other than a response writes 16 bytes, no more: the guest's area may end there.
    assert!(area[16..].iter().all(|byte| *byte == 0xaa));
}

#[tokio::test]
async fn ret_bytes_and_strings_are_lists_at_4_and_8() {
    let (store, abi, area) = ret(Ret::Bytes(b"value".to_vec())).await;
    assert_eq!(area[0], 0);
    assert_eq!(word(&area, 8), 5);
    assert_eq!(abi.bytes(&store, word(&area, 4), 5).unwrap(), b"value");

    let (store, abi, area) = ret(Ret::Strings(vec!["a".into(), "bc".into()])).await;
    assert_eq!((area[0], word(&area, 8)), (0, 2));
    let list = abi.bytes(&store, word(&area, 4), 16).unwrap();
    assert_eq!(
        abi.string(&store, word(&list, 0), word(&list, 4)).unwrap(),
        "a"
    );
    assert_eq!(
        abi.string(&store, word(&list, 8), word(&list, 12)).unwrap(),
        "bc"
    );
}

#[tokio::test]
async fn ret_error_writes_tag_one_the_case_at_4_and_its_string_at_8() {
    let (store, abi, area) = ret(Ret::Error(3, "no such key".into())).await;
    assert_eq!((area[0], area[4]), (1, 3));
    assert_eq!(
        abi.string(&store, word(&area, 8), word(&area, 12)).unwrap(),
        "no such key"
    );
    let (_, _, area) = ret(Ret::Case(2)).await;
    assert_eq!((area[0], area[4]), (1, 2));
}

#[tokio::test]
async fn ret_response_reads_back_as_the_same_record() {
    let headers = vec![("content-type".to_string(), "text/plain".to_string())];
    let response = Response {
        status: 201,
        headers: Some(headers.clone()),
        body: Some(b"made".to_vec()),
    };
    let (store, abi, area) = ret(Ret::Response(response)).await;
    assert_eq!(area[0], 0);
    // The record is the payload, at +4.
    let read = abi.response(&store, RET + 4).unwrap();
    assert_eq!(read.status, 201);
    assert_eq!(read.headers, Some(headers));
    assert_eq!(read.body.as_deref(), Some(&b"made"[..]));

    let bare = Response {
        status: 204,
        headers: None,
        body: None,
    };
    let (store, abi, _) = ret(Ret::Response(bare)).await;
    let read = abi.response(&store, RET + 4).unwrap();
    assert_eq!((read.status, read.headers, read.body), (204, None, None));
}

#[tokio::test]
async fn ret_to_an_area_outside_memory_traps() {
    let (mut store, abi) = guest().await;
    let error = abi.ret(&mut store, 65536 - 8, Ret::Unit).await.unwrap_err();
    assert!(is_out_of_bounds(&error), "{error:?}");
}

#[tokio::test]
async fn outgoing_reads_the_flattened_request_record() {
    let (mut store, abi) = guest().await;
    let uri = abi
        .give(&mut store, 1, b"http://example.test/a")
        .await
        .unwrap();
    let pairs = [("accept".to_string(), "*/*".to_string())];
    let (headers, headers_len) = abi.give_pairs(&mut store, &pairs).await.unwrap();
    let body = abi.give(&mut store, 1, b"payload").await.unwrap();
    let args = [1, uri, 21, headers, headers_len, 0, 0, 1, body, 7];
    let outgoing = abi.outgoing(&store, args).unwrap();
    assert_eq!(outgoing.method, http::Method::POST);
    assert_eq!(outgoing.uri, "http://example.test/a");
    assert_eq!(outgoing.headers, pairs);
    assert_eq!(outgoing.body, b"payload");

    // No body when its option's tag is 0, whatever the pointer says.
    let bodiless = abi.outgoing(&store, [0, uri, 21, 0, 0, 0, 0, 0, -1, -1]);
    assert!(bodiless.unwrap().body.is_empty());
    // A method past the enum's cases is refused.
    assert!(
        abi.outgoing(&store, [7, uri, 21, 0, 0, 0, 0, 0, 0, 0])
            .is_err()
    );
}

#[tokio::test]
async fn request_lays_out_a_handlers_arguments_with_client_addr_only_when_given() {
    let (mut store, abi) = guest().await;
    let mut request = HttpRequest {
        method: 1,
        uri: "/cart?item=3".into(),
        headers: vec![("host".into(), "shop.test".into())],
        params: vec![("item".into(), "3".into())],
        client_addr: None,
        body: bytes::Bytes::from_static(b"{}"),
    };
    let words = |args: Vec<wasmtime::Val>| -> Vec<i32> {
        args.iter().map(|arg| arg.unwrap_i32()).collect()
    };
    let args = words(abi.request(&mut store, &request).await.unwrap());
    let [
        method,
        uri,
        uri_len,
        headers,
        headers_len,
        params,
        params_len,
        has_body,
        body,
        body_len,
    ] = args[..]
    else {
        panic!("{} arguments without a client address", args.len());
    };
    assert_eq!(method, 1);
    assert_eq!(abi.string(&store, uri, uri_len).unwrap(), "/cart?item=3");
    assert_eq!(
        abi.pairs(&store, headers, headers_len).unwrap(),
        request.headers
    );
    assert_eq!(
        abi.pairs(&store, params, params_len).unwrap(),
        request.params
    );
    assert_eq!(has_body, 1);
    assert_eq!(abi.bytes(&store, body, body_len).unwrap(), b"{}");

    // Spin 1's `client-addr` comes after the params, before the body.
    request.client_addr = Some("10.0.0.5:4000".into());
    let args = words(abi.request(&mut store, &request).await.unwrap());
    assert_eq!(args.len(), 12);
    assert_eq!(
        abi.string(&store, args[7], args[8]).unwrap(),
        "10.0.0.5:4000"
    );
    assert_eq!(abi.bytes(&store, args[10], args[11]).unwrap(), b"{}");
}

#[test]
fn into_http_keeps_status_headers_and_body() {
    let response = Response {
        status: 404,
        headers: Some(vec![("x-a".into(), "1".into())]),
        body: Some(b"gone".to_vec()),
    };
    let http = response.into_http().unwrap();
    assert_eq!(http.status(), http::StatusCode::NOT_FOUND);
    assert_eq!(http.headers()["x-a"], "1");
}

#[test]
fn into_http_refuses_a_status_that_is_not_http() {
    for status in [0, 99, 1000] {
        let response = Response {
            status,
            headers: None,
            body: None,
        };
        let error = response.into_http().unwrap_err();
        assert!(error.contains(&status.to_string()), "{error}");
    }
}

#[test]
fn into_http_refuses_a_header_name_http_does_not_allow() {
    for name in ["bad name", "", "colon:"] {
        let response = Response {
            status: 200,
            headers: Some(vec![(name.into(), "v".into())]),
            body: None,
        };
        assert!(response.into_http().is_err(), "{name:?} was accepted");
    }
    let response = Response {
        status: 200,
        headers: Some(vec![("x-a".into(), "line\nbreak".into())]),
        body: None,
    };
    assert!(response.into_http().is_err(), "a value with a newline");
}
