// The playground's computations, apart from the page so node can test them (tests/js/).

/** Cosine similarity of every pair of vectors: a square matrix. */
export function cosineMatrix(vectors) {
  return crossCosines(vectors, vectors);
}

/** Cosine similarity of each of `rows` with each of `columns`. */
export function crossCosines(rows, columns) {
  const norm = (v) => Math.sqrt(v.reduce((sum, x) => sum + x * x, 0));
  const columnNorms = columns.map(norm);
  return rows.map((a) => {
    const aNorm = norm(a);
    return columns.map((b, j) => {
      let dot = 0;
      for (let k = 0; k < a.length; k++) dot += a[k] * b[k];
      const denominator = aNorm * columnNorms[j];
      return denominator === 0 ? 0 : dot / denominator;
    });
  });
}

/** Indices by score, highest first; equal scores keep their input order. */
export function rankIndices(scores) {
  return scores.map((_, i) => i).sort((i, j) => scores[j] - scores[i] || i - j);
}

/** The other rows' scores against row `index` of a similarity matrix, nearest first. */
export function nearestNeighbours(matrix, index) {
  const row = matrix[index];
  return rankIndices(row)
    .filter((i) => i !== index)
    .map((i) => ({ index: i, score: row[i] }));
}

/** softmax(scale * values): CLIP turns cosines into label probabilities with scale 100. */
export function softmax(values, scale = 1) {
  const scaled = values.map((v) => v * scale);
  const top = Math.max(...scaled);
  const exps = scaled.map((v) => Math.exp(v - top));
  const total = exps.reduce((sum, v) => sum + v, 0);
  return exps.map((v) => v / total);
}

/** The non-empty lines of a text box, trimmed. */
export function lines(text) {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line.length > 0);
}

/** One POSIX shell word holding `text` exactly (single quotes; a quote becomes '\''). */
export function shellQuote(text) {
  return `'${String(text).replaceAll("'", "'\\''")}'`;
}

/** The curl command that sends the same request. The key is never written out: with one, the
 * command reads it from $INGRAIN_API_KEY. */
export function curlCommand(origin, method, path, body, withKey) {
  const parts = ["curl", "-sS"];
  if (method !== "GET") parts.push("-X", method);
  parts.push(shellQuote(origin + path));
  if (withKey) parts.push("-H", '"Authorization: Bearer $INGRAIN_API_KEY"');
  if (body !== undefined) {
    parts.push("-H", shellQuote("Content-Type: application/json"));
    parts.push("-d", shellQuote(JSON.stringify(body)));
  }
  return parts.join(" ");
}

/** What the server said, as it said it: the "error" message of its JSON answer (either shape),
 * else the body's text, after the status. */
export function errorText(status, bodyText) {
  let message = bodyText;
  try {
    const error = JSON.parse(bodyText).error;
    if (typeof error === "string") message = error;
    else if (error && typeof error.message === "string") message = error.message;
  } catch {
    // not JSON: the text as it came
  }
  return `HTTP ${status}: ${message}`;
}

/** What the playground offers for a model, from its /model_info and whether it has built-in
 * class labels. */
export function panelsFor(info, hasLabels) {
  const towers = info.towers || {};
  switch (info.task) {
    case "rerank":
      return ["rerank"];
    case "text-classification":
      return ["classify-text"];
    case "classification":
      return ["classify-image"];
    case "embedding": {
      if (towers.text && towers.image) {
        return [...(hasLabels ? ["classify-image"] : []), "zero-shot", "match"];
      }
      return towers.text ? ["similarity"] : [];
    }
    default:
      return [];
  }
}

/** A model's kind, in words. */
export function kindOf(info, hasLabels) {
  const towers = info.towers || {};
  switch (info.task) {
    case "rerank":
      return "reranker";
    case "text-classification":
      return "text classifier";
    case "classification":
      return "image classifier";
    case "embedding":
      if (towers.text && towers.image) return hasLabels ? "CLIP, zero-shot classifier" : "CLIP";
      return towers.text ? "text embedding" : "image embedding";
    default:
      return String(info.task);
  }
}

/** Its dimensions, in words: each tower's embedding size, and the number of classes. */
export function dimensionsOf(info, labelCount) {
  if (info.task === "rerank") return "1 score per pair";
  const classes = labelCount ? [`${labelCount} classes`] : [];
  if (info.task !== "embedding") return classes.join("");
  const towers = Object.entries(info.towers || {});
  return [...towers.map(([name, tower]) => `${name} ${tower.embeddingSize}`), ...classes].join(", ");
}

/** A heat-map colour for a similarity in [-1, 1]: white at 0, blue towards 1, red towards -1
 * (never darker than dark text stays readable on). */
export function heatColour(value) {
  const v = Math.max(-1, Math.min(1, value));
  const fade = Math.round(255 - 150 * Math.abs(v));
  return v >= 0 ? `rgb(${fade}, ${fade}, 255)` : `rgb(255, ${fade}, ${fade})`;
}
