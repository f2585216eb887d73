// The picture attached to the next message: chosen with the file input, read as a data: URL, and shown by its
// name (never as an <img> of the data URL) with a Remove button until the message is sent.

/** A file as a data: URL (base64), the form an image_url part carries. */
function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.addEventListener("load", () => resolve(reader.result));
    reader.addEventListener("error", () => reject(reader.error));
    reader.readAsDataURL(file);
  });
}

export class Attachment {
  /** {name, url}, or null. */
  picture = null;
  /** True while a chosen file is being read: Send waits for it. */
  reading = false;

  /** `elements`: {input, shown, name, remove}; `onReading()` runs when reading starts and ends. */
  constructor(elements, onReading, onError) {
    this.ui = elements;
    this.onReading = onReading;
    this.onError = onError;
    elements.input.addEventListener("change", () => this.#read(elements.input.files[0]));
    elements.remove.addEventListener("click", () => {
      this.set(null);
      elements.input.focus();
    });
  }

  async #read(file) {
    if (!file) return;
    this.reading = true;
    this.onReading();
    try {
      this.set({ name: file.name, url: await readDataUrl(file) });
    } catch (error) {
      this.set(null);
      this.onError(`could not read ${file.name}: ${error.message}`);
    } finally {
      this.reading = false;
      this.onReading();
    }
  }

  /** Attach `picture` ({name, url}), or with null remove it. */
  set(picture) {
    this.picture = picture;
    this.ui.name.textContent = picture ? picture.name : "";
    this.ui.shown.hidden = !picture;
    if (!picture) this.ui.input.value = "";
  }
}
