// Frame-sequence videos played in lockstep: one shared play/pause, frame slider and speed for
// every clip of a panel (candidates side by side, or imagined next to real), so frame t of
// each clip is on screen at the same time.

export class Player {
  constructor(controls) {
    this.clips = []; // {img, urls, marks}
    this.frame = 0;
    this.timer = null;
    this.fps = 6;
    controls.replaceChildren();
    controls.classList.add("player");
    this.button = el("button", { type: "button", className: "play" }, "▶ play");
    this.slider = el("input", { type: "range", min: "0", max: "0", value: "0", className: "frame-slider" });
    this.label = el("span", { className: "frame-label" }, "");
    this.speed = el("select", { className: "speed" });
    for (const fps of [2, 6, 12, 24]) {
      this.speed.append(el("option", { value: String(fps), selected: fps === this.fps }, `${fps} fps`));
    }
    controls.append(this.button, this.slider, this.label, this.speed);
    this.button.addEventListener("click", () => (this.timer ? this.pause() : this.play()));
    this.slider.addEventListener("input", () => this.show(Number(this.slider.value)));
    this.speed.addEventListener("change", () => {
      this.fps = Number(this.speed.value);
      if (this.timer) {
        this.pause();
        this.play();
      }
    });
  }

  get length() {
    return Math.max(0, ...this.clips.map((c) => c.urls.length));
  }

  // A clip: an <img> in `figure` that shows urls[t] (its last frame once it has ended);
  // `marks[t]` true adds the class "marked" (e.g. a success flag) to the figure.
  add(figure, urls, marks = null) {
    const img = el("img", { className: "frame", alt: "frame", src: urls[0] || "" });
    figure.prepend(img);
    this.clips.push({ figure, img, urls, marks });
    this.slider.max = String(Math.max(0, this.length - 1));
    this.show(0);
    return img;
  }

  show(t) {
    this.frame = Math.max(0, Math.min(t, this.length - 1));
    for (const clip of this.clips) {
      const i = Math.min(this.frame, clip.urls.length - 1);
      if (i >= 0) clip.img.src = clip.urls[i];
      if (clip.marks) clip.figure.classList.toggle("marked", Boolean(clip.marks[i]));
    }
    this.slider.value = String(this.frame);
    this.label.textContent = `frame ${this.frame + 1} / ${this.length}`;
  }

  play() {
    if (this.length < 2) return;
    this.button.textContent = "❚❚ pause";
    this.timer = window.setInterval(() => this.show((this.frame + 1) % this.length), 1000 / this.fps);
  }

  pause() {
    window.clearInterval(this.timer);
    this.timer = null;
    this.button.textContent = "▶ play";
  }

  clear() {
    this.pause();
    this.clips = [];
    this.slider.max = "0";
    this.label.textContent = "";
  }
}

// document.createElement with properties and children.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else node[name] = value;
  }
  node.append(...children);
  return node;
}
