// Unit tests of the playground's computations (api/static/logic.mjs), run by `node --test`
// from tests/integration/test_pages.py.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";

import {
  cosineMatrix,
  crossCosines,
  curlCommand,
  dimensionsOf,
  errorText,
  heatColour,
  kindOf,
  lines,
  nearestNeighbours,
  panelsFor,
  rankIndices,
  shellQuote,
  softmax,
} from "../../api/static/logic.mjs";

const close = (a, b, tolerance = 1e-12) => assert.ok(Math.abs(a - b) <= tolerance, `${a} != ${b}`);

test("cosines: unit diagonal, symmetric, scale-free, orthogonal is 0, opposite is -1", () => {
  const vectors = [[1, 2, 3], [-2, 0.5, 4], [2, 4, 6], [-1, -2, -3], [3, 0, -1]];
  const matrix = cosineMatrix(vectors);
  for (let i = 0; i < vectors.length; i++) {
    close(matrix[i][i], 1);
    for (let j = 0; j < vectors.length; j++) close(matrix[i][j], matrix[j][i]);
  }
  close(matrix[0][2], 1);
  close(matrix[0][3], -1);
  close(crossCosines([[1, 0]], [[0, 5]])[0][0], 0);
  const [a, b] = [vectors[0], vectors[1]];
  const dot = a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  close(matrix[0][1], dot / (Math.hypot(...a) * Math.hypot(...b)));
});

test("a zero vector has cosine 0 with everything, not NaN", () => {
  assert.deepEqual(crossCosines([[0, 0]], [[1, 2], [0, 0]]), [[0, 0]]);
});

test("ranking: highest first, ties in input order", () => {
  assert.deepEqual(rankIndices([0.1, 0.9, 0.5, 0.9, -2]), [1, 3, 2, 0, 4]);
  assert.deepEqual(rankIndices([]), []);
});

test("nearest neighbours leave the text itself out", () => {
  const matrix = cosineMatrix([[1, 0], [0, 1], [1, 1], [-1, 0]]);
  const nearest = nearestNeighbours(matrix, 0);
  assert.deepEqual(nearest.map((n) => n.index), [2, 1, 3]);
  close(nearest[0].score, Math.SQRT1_2);
});

test("softmax sums to 1, keeps order, survives large scales", () => {
  const probabilities = softmax([0.3, 0.2, 0.25], 100);
  close(probabilities.reduce((s, p) => s + p, 0), 1, 1e-12);
  assert.deepEqual(rankIndices(probabilities), [0, 2, 1]);
  close(probabilities[0] / probabilities[1], Math.exp(10), 1e-6 * Math.exp(10));
  assert.ok(softmax([1000, 0], 100).every(Number.isFinite));
});

test("lines: trimmed, blank ones dropped", () => {
  assert.deepEqual(lines("  a \n\n b\n   \nc"), ["a", "b", "c"]);
});

test("shell quoting survives every character a shell treats specially", () => {
  const nasty = `it's "quoted" $HOME \`id\` \\ ; | & > < * ? ! # ( ) { } \n new line '' end`;
  const echoed = execFileSync("sh", ["-c", `printf %s ${shellQuote(nasty)}`]).toString();
  assert.equal(echoed, nasty);
});

test("curl: the same method, URL and body; the key is read from the environment", () => {
  const body = { name: "it's <b>", text: ["a'b"] };
  const command = curlCommand("http://127.0.0.1:8686", "POST", "/embed_text", body, true);
  assert.ok(!command.includes("secret"));
  assert.ok(command.includes('"Authorization: Bearer $INGRAIN_API_KEY"'));
  // The shell hands curl exactly the JSON body the page sent.
  const words = execFileSync("sh", ["-c", `printf '%s\\n' ${command.slice(5)}`], {
    env: { INGRAIN_API_KEY: "k" },
  })
    .toString()
    .trimEnd()
    .split("\n");
  assert.deepEqual(words, [
    "-sS", "-X", "POST", "http://127.0.0.1:8686/embed_text", "-H", "Authorization: Bearer k",
    "-H", "Content-Type: application/json", "-d", JSON.stringify(body),
  ]);
  assert.equal(curlCommand("http://h", "GET", "/v1/models", undefined, false), "curl -sS 'http://h/v1/models'");
});

test("errors are shown as the server wrote them, in either error shape or as plain text", () => {
  assert.equal(errorText(400, '{"error": "\\"text\\" is required"}'), 'HTTP 400: "text" is required');
  assert.equal(errorText(401, '{"error": {"message": "bad key", "code": "x"}}'), "HTTP 401: bad key");
  assert.equal(errorText(502, "<html>bad gateway</html>"), "HTTP 502: <html>bad gateway</html>");
});

test("panels and kinds by model", () => {
  const text = { embeddingSize: 384 };
  const image = { embeddingSize: 32 };
  const cases = [
    [{ task: "embedding", towers: { text } }, false, ["similarity"], "text embedding"],
    [{ task: "embedding", towers: { text, image } }, false, ["zero-shot", "match"], "CLIP"],
    [
      { task: "embedding", towers: { text, image } },
      true,
      ["classify-image", "zero-shot", "match"],
      "CLIP, zero-shot classifier",
    ],
    [{ task: "rerank", towers: { text } }, false, ["rerank"], "reranker"],
    [{ task: "text-classification", towers: { text } }, false, ["classify-text"], "text classifier"],
    [{ task: "classification", towers: { image } }, true, ["classify-image"], "image classifier"],
    [{ task: "embedding", towers: { image } }, false, [], "image embedding"],
  ];
  for (const [info, hasLabels, panels, kind] of cases) {
    assert.deepEqual(panelsFor(info, hasLabels), panels);
    assert.equal(kindOf(info, hasLabels), kind);
  }
  assert.equal(dimensionsOf({ task: "embedding", towers: { text, image } }), "text 384, image 32");
  assert.equal(dimensionsOf({ task: "embedding", towers: { text, image } }, 5), "text 384, image 32, 5 classes");
  assert.equal(dimensionsOf({ task: "classification", towers: { image: { embeddingSize: 5 } } }, 5), "5 classes");
  assert.equal(dimensionsOf({ task: "text-classification", towers: { pair: { embeddingSize: 3 } } }, 3), "3 classes");
  assert.equal(dimensionsOf({ task: "rerank", towers: { pair: { embeddingSize: 1 } } }), "1 score per pair");
});

test("heat colours: white at 0, blue and red at the ends, clamped", () => {
  assert.equal(heatColour(0), "rgb(255, 255, 255)");
  assert.equal(heatColour(1), "rgb(105, 105, 255)");
  assert.equal(heatColour(-1), "rgb(255, 105, 105)");
  assert.equal(heatColour(7), heatColour(1));
});
