// The playground: lists the models and lets a person try each, through the same public routes
// any client calls. Text from the server or the person only ever enters the page as text
// (textContent, text nodes), never as markup.
import {
  crossCosines,
  cosineMatrix,
  curlCommand,
  dimensionsOf,
  errorText,
  heatColour,
  kindOf,
  lines,
  nearestNeighbours,
  panelsFor,
  rankIndices,
  softmax,
} from "./logic.mjs";

const $ = (id) => document.getElementById(id);
const models = new Map(); // name -> {info, labels, panels}

/** An element with properties set and children appended (strings become text nodes). */
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

class ServerError extends Error {}

/** Calls a route with the typed key; shows the request as curl in `curlBox`. */
async function call(method, path, body, curlBox) {
  const key = $("api-key").value.trim();
  if (curlBox) curlBox.textContent = curlCommand(location.origin, method, path, body, key !== "");
  const headers = {};
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const json = body === undefined ? undefined : JSON.stringify(body);
  const response = await fetch(path, { method, headers, body: json });
  const text = await response.text();
  if (!response.ok) throw new ServerError(errorText(response.status, text), { cause: response });
  return JSON.parse(text);
}

const query = (path, name) => `${path}?name=${encodeURIComponent(name)}`;

let latestListing = 0; // each listing's number: only the latest one shows its models

async function loadModels() {
  const listing = ++latestListing;
  const status = $("models-status");
  const errorBox = $("models-error");
  const body = $("models").tBodies[0];
  status.textContent = "Reading the models…";
  errorBox.hidden = true;
  body.replaceChildren();
  let names, note, described;
  try {
    try {
      const loaded = await call("GET", "/loaded_models", undefined, $("models-curl"));
      names = loaded.models.map((model) => model.name);
      note = `${names.length} loaded model(s).`;
    } catch (error) {
      // Management routes may answer on the model port only: the repository's list instead.
      if (!(error instanceof ServerError) || error.cause.status !== 404) throw error;
      const listed = await call("GET", "/v1/models", undefined, $("models-curl"));
      names = listed.data.map((model) => model.id);
      note = `${names.length} model(s) in the repository (/loaded_models does not answer on this port).`;
    }
    described = await Promise.all(names.map(describe));
  } catch (error) {
    if (listing !== latestListing) return;
    status.textContent = "The models could not be listed.";
    errorBox.hidden = false;
    errorBox.textContent = error.message;
    return;
  }
  // A key typed while this listing ran started a newer one: that one shows the models.
  if (listing !== latestListing) return;
  models.clear();
  for (const [name, model] of described) models.set(name, model);
  status.textContent = note;
  for (const name of names) {
    const { info, labels } = models.get(name);
    body.append(
      el(
        "tr",
        {},
        el("td", { textContent: name }),
        el("td", { textContent: kindOf(info, labels !== null) }),
        el("td", { textContent: dimensionsOf(info, labels?.length) }),
        el("td", { textContent: info.library }),
        el("td", { textContent: info.maxLength ?? "" }),
      ),
    );
  }
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...names.map((name) => el("option", { value: name, textContent: name })));
  if (names.includes(previous)) select.value = previous;
  showPanels();
}

/** A model's name and what the playground needs of it: its info, labels and panels. */
async function describe(name) {
  const info = await call("GET", query("/model_info", name));
  let labels = null;
  if (info.task !== "rerank" && !(info.task === "embedding" && !info.towers.image)) {
    try {
      labels = (await call("GET", query("/model_classification_labels", name))).labels;
    } catch (error) {
      if (!(error instanceof ServerError) || error.cause.status !== 400) throw error;
    }
  }
  return [name, { info, labels, panels: panelsFor(info, labels !== null) }];
}

/** Copies `box`'s text. Where the browser has no clipboard for the page (over plain http from
 * another host than localhost) or refuses it, selects the text for the person to copy. */
async function copyText(box, note) {
  try {
    await navigator.clipboard.writeText(box.textContent);
    note.textContent = "Copied.";
  } catch {
    getSelection().selectAllChildren(box);
    note.textContent = "Selected: press Ctrl+C to copy.";
  }
}

/** A panel: its inputs, a Run button, the answer, the error and the request as curl. */
function panel(kind, title, inputs, run) {
  const output = el("div", { className: "output" });
  const error = el("pre", { className: "error", hidden: true });
  const curl = el("pre", { className: "curl" });
  const copy = el("button", { type: "button", textContent: "Copy curl" });
  const copied = el("span", { className: "status copied" });
  copy.addEventListener("click", () => copyText(curl, copied));
  const button = el("button", { type: "button", textContent: "Run", className: "run" });
  button.addEventListener("click", async () => {
    error.hidden = true;
    output.replaceChildren();
    button.disabled = true;
    try {
      await run(output, curl);
    } catch (failure) {
      error.hidden = false;
      error.textContent = failure.message;
    } finally {
      button.disabled = false;
    }
  });
  return el(
    "div",
    { className: "panel", id: `panel-${kind}` },
    el("h3", { textContent: title }),
    ...inputs,
    button,
    error,
    output,
    el("details", {}, el("summary", { textContent: "as curl" }), copy, copied, curl),
  );
}

function textBox(className, value) {
  return el("textarea", { className, value });
}

/** A drop zone and file chooser; `read()` gives the chosen images as data URIs. */
function imagePicker(className, multiple) {
  const input = el("input", { type: "file", accept: "image/*", multiple, className });
  const thumbs = el("div", { className: "thumbs" });
  let images = [];
  const take = async (files) => {
    const chosen = [...files].filter((file) => file.type.startsWith("image/"));
    images = await Promise.all(chosen.map(dataUri));
    if (!multiple) images = images.slice(0, 1);
    thumbs.replaceChildren(...images.map((src) => el("img", { src, alt: "" })));
  };
  input.addEventListener("change", () => take(input.files));
  const zone = el("div", { className: "drop" }, "Drop image(s) here, or ", input, thumbs);
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    take(event.dataTransfer.files);
  });
  return { node: zone, read: () => images };
}

function dataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function needImages(images) {
  if (images.length === 0) throw new Error("Choose or drop an image first.");
  return images;
}

/** Bars for (label, score) pairs, highest first. */
function bars(pairs, note) {
  const top = Math.max(...pairs.map(([, score]) => score), 1e-9);
  const list = el("ol", { className: "bars" });
  for (const [label, score, detail] of pairs) {
    const bar = el("div", { className: "bar" });
    bar.style.width = `${Math.max(0, (100 * score) / top)}%`;
    const item = el(
      "li",
      {},
      el("span", { className: "label", textContent: label }),
      bar,
      el("span", { className: "score", textContent: score.toFixed(4), title: detail ?? "" }),
    );
    item.dataset.label = label;
    item.dataset.score = String(score);
    list.append(item);
  }
  return note ? [el("p", { className: "status", textContent: note }), list] : [list];
}

/** A heat map of `matrix` with the given row and column headings. */
function heatMap(matrix, rowNames, columnNames) {
  const head = el("tr", {}, el("th"), ...columnNames.map((n) => el("th", { textContent: n, title: n })));
  const rows = matrix.map((row, i) => {
    const cells = row.map((value) => {
      const cell = el("td", { textContent: value.toFixed(3) });
      cell.style.backgroundColor = heatColour(value);
      cell.dataset.value = String(value);
      return cell;
    });
    return el("tr", {}, el("th", { textContent: rowNames[i], title: rowNames[i] }), ...cells);
  });
  return el("table", { className: "heat" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

const PANELS = {
  similarity(name) {
    const texts = textBox(
      "texts",
      "A cat sits on the mat.\nA kitten rests on a rug.\nStocks fell sharply today.\nThe market dropped.",
    );
    return panel("similarity", "Similarity of texts (one per line)", [texts], async (out, curl) => {
      const items = lines(texts.value);
      const answer = await call("POST", "/embed_text", { name, text: items }, curl);
      const matrix = cosineMatrix(answer.embeddings);
      const nearest = el("ol", { className: "ranked nearest" });
      for (const { index, score } of nearestNeighbours(matrix, 0)) {
        const item = el("li", {}, el("span", { className: "score", textContent: score.toFixed(4) }), items[index]);
        item.dataset.index = String(index);
        nearest.append(item);
      }
      out.append(
        heatMap(matrix, items, items),
        el("h3", { textContent: "Nearest to the first text" }),
        nearest,
      );
    });
  },

  rerank(name) {
    const question = el("input", { type: "text", className: "query", value: "How do plants make food?" });
    const documents = textBox(
      "documents",
      "Photosynthesis turns light into chemical energy.\nThe stock market closed higher.\nPlants use sunlight, water and CO2 to make sugar.",
    );
    const inputs = [el("label", {}, "Query", question), el("label", {}, "Documents (one per line)", documents)];
    return panel("rerank", "Rerank documents", inputs, async (out, curl) => {
      const texts = lines(documents.value);
      const answer = await call("POST", "/rerank", { name, query: question.value, texts }, curl);
      const list = el("ol", { className: "ranked" });
      for (const { index, score } of answer.results) {
        const item = el("li", {}, el("span", { className: "score", textContent: score.toFixed(4) }), texts[index]);
        item.dataset.index = String(index);
        item.dataset.score = String(score);
        list.append(item);
      }
      out.append(list);
    });
  },

  "classify-text"(name) {
    const text = textBox("text", "I loved this film, it was wonderful.");
    return panel("classify-text", "Classify a text", [text], async (out, curl) => {
      const body = { name, text: [text.value], top_k: 5 };
      const answer = await call("POST", "/classify_text", body, curl);
      out.append(...bars(answer.labels[0].map(({ label, score }) => [label, score])));
    });
  },

  "classify-image"(name, { labels }) {
    const picker = imagePicker("image", false);
    return panel("classify-image", "Classify an image", [picker.node], async (out, curl) => {
      const image = needImages(picker.read());
      const answer = await call("POST", "/classify_image", { name, image }, curl);
      const probabilities = answer.probabilities[0];
      const top = rankIndices(probabilities).slice(0, 5);
      out.append(...bars(top.map((i) => [labels[i], probabilities[i]])));
    });
  },

  "zero-shot"(name) {
    const picker = imagePicker("image", false);
    const labels = textBox("labels", "a photo of a cat\na photo of a dog\na diagram");
    const inputs = [picker.node, el("label", {}, "Labels (one per line)", labels)];
    return panel("zero-shot", "Zero-shot: which label fits the image", inputs, async (out, curl) => {
      const image = needImages(picker.read());
      const text = lines(labels.value);
      const answer = await call("POST", "/embed", { name, text, image }, curl);
      const cosines = crossCosines(answer.imageEmbeddings, answer.textEmbeddings)[0];
      const probabilities = softmax(cosines, 100);
      const pairs = rankIndices(probabilities).map((i) => [
        text[i],
        probabilities[i],
        `cosine ${cosines[i].toFixed(4)}`,
      ]);
      out.append(...bars(pairs, "softmax of 100 × cosine (CLIP's logit scale)"));
    });
  },

  match(name) {
    const picker = imagePicker("images", true);
    const texts = textBox("texts", "a photo of a cat\na photo of a dog\na red square");
    const inputs = [picker.node, el("label", {}, "Texts (one per line)", texts)];
    return panel("match", "Which text matches which image", inputs, async (out, curl) => {
      const image = needImages(picker.read());
      const text = lines(texts.value);
      const answer = await call("POST", "/embed", { name, text, image }, curl);
      const matrix = crossCosines(answer.imageEmbeddings, answer.textEmbeddings);
      const table = heatMap(matrix, image.map((_, i) => `image ${i + 1}`), text);
      matrix.forEach((row, i) => {
        const cells = table.tBodies[0].rows[i].cells;
        cells[0].prepend(el("img", { src: image[i], alt: "", className: "thumb" }));
        cells[1 + rankIndices(row)[0]].classList.add("best");
      });
      out.append(table);
    });
  },
};

function showPanels() {
  const name = $("model").value;
  const model = models.get(name);
  const container = $("panels");
  container.replaceChildren();
  if (!model) return;
  if (model.panels.length === 0) {
    container.append(el("p", { className: "status", textContent: "Nothing to try for this kind of model yet." }));
  }
  for (const kind of model.panels) container.append(PANELS[kind](name, model));
}

$("model").addEventListener("change", showPanels);
$("api-key").addEventListener("change", loadModels);
loadModels();
