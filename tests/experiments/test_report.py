"""The digits report's Huffman stream table: bounds in bits, both codes, streams matched by path."""

from experiments import report


def row(seed, streams):
  base = {"model": "m", "technique": "t", "seed": seed, "accuracy": 0.9, "accuracy_apply": 0.9, "bytes": 10}
  base |= {"dense_bytes": 40, "file_bytes": 20, "dense_file_bytes": 80, "sparsity": 0.5, "train_seconds": 1.0}
  return base | {"roundtrip_ok": True, "huffman_streams": streams}


def stream(path, payload_bits, entropy_bytes, table, pairs=None, used=True, block=1):
  candidates = [[1, payload_bits, table]] + ([[2, *pairs]] if pairs else [])
  coded = (payload_bits + 7) // 8 + table if block == 1 else (pairs[0] + 7) // 8 + pairs[1]
  return {
    "path": path,
    "raw_bytes": 100,
    "coded_bytes": coded,
    "table_bytes": table if block == 1 else pairs[1],
    "entropy_bytes": entropy_bytes,
    "payload_bits": payload_bits if block == 1 else pairs[0],
    "block": block,
    "candidates": candidates,
    "used": used,
  }


def test_streams_are_averaged_by_path_and_compared_in_bits():
  a0 = stream("a.values", 808, 100.0, 18, pairs=(790, 150))
  b0 = stream("b.positions", 400, 50.0, 10, used=False)
  a1 = stream("a.values", 816, 100.0, 18, pairs=(800, 150))
  (summary,) = report.summarize([row(0, [a0, b0]), row(1, [a1])])  # b exists in seed 0 only
  a, b = summary["huffman_streams"]
  assert a["path"] == "a.values" and b["path"] == "b.positions" and (a["seeds"], b["seeds"]) == (2, 1)
  assert abs(a["payload_over_bound"] - (812 / 800 - 1)) < 1e-12  # bits, padding excluded: +1.5%
  assert abs(a["over_bound_by_block"]["2"][0] - (795 / 800 - 1)) < 1e-12 and a["over_bound_by_block"]["2"][1] == 150
  assert a["within_target"] is False  # 812 payload bits > 1.01 * 800
  assert b["within_target"] is True and b["used"] is False  # 400 bits <= 1.01 * 400
  text = report.stream_table([summary])
  assert "+1.50%" in text and "-0.62%" in text and "+0.00%" in text and "yes (single)" in text


def test_extended_codes_are_named_by_block_and_kept_codes_listed():
  a0 = stream("a.values", 808, 100.0, 18, pairs=(790, 150))
  a0 |= {"payload_bits": 805, "table_bytes": 6, "coded_bytes": 107, "block": 3, "model": "product"}
  a0["candidates"] += [[1, 830, 5, "product"], [3, 805, 6, "product"]]
  a1 = stream("a.values", 808, 100.0, 18)  # seed 1 kept the single-symbol code and tried no extended one
  (summary,) = report.summarize([row(0, [a0]), row(1, [a1])])
  (a,) = summary["huffman_streams"]
  assert set(a["over_bound_by_block"]) == {"1", "2", "x1", "x3"} and a["over_bound_by_block"]["x3"][1] == 6
  assert abs(a["over_bound_by_block"]["1"][0] - (808 / 800 - 1)) < 1e-12  # both seeds tried it
  assert abs(a["over_bound_by_block"]["x3"][0] - (805 / 800 - 1)) < 1e-12  # seed 0 only
  assert a["codes_kept"] == ["ext x3", "single"] and a["within_target"] is True  # (805 + 808) / 2 <= 808
  assert "yes (ext x3, single)" in report.stream_table([summary])
