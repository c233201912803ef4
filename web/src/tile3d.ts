// The last picture of the 3-D tile of the four-view layout, kept in a framebuffer: while the
// label is being edited the tile is copied back from here (blitFramebuffer) instead of being
// ray-cast again on every frame (viewer.ts re-casts it once editing pauses). Positions are
// canvas pixels, [left, top, width, height] with a top-left origin as NiiVue passes them.

export class Tile3DCache {
  private fb: WebGLFramebuffer | null = null;
  private rb: WebGLRenderbuffer | null = null;
  private w = 0;
  private h = 0;
  private at: number[] = [];

  constructor(private gl: WebGL2RenderingContext) {}

  drop(): void {
    if (this.fb) this.gl.deleteFramebuffer(this.fb);
    if (this.rb) this.gl.deleteRenderbuffer(this.rb);
    this.fb = this.rb = null;
    this.at = [];
  }

  /** Copy the 3-D tile just drawn at `ltwh` into the cache. */
  save(ltwh: number[]): void {
    const gl = this.gl;
    const [x, top, w, h] = ltwh.map(Math.round);
    const y = gl.drawingBufferHeight - top - h;
    if (!this.fb || this.w !== w || this.h !== h) {
      this.drop();
      const fb = gl.createFramebuffer(), rb = gl.createRenderbuffer();
      if (!fb || !rb) return;
      gl.bindRenderbuffer(gl.RENDERBUFFER, rb);
      gl.renderbufferStorage(gl.RENDERBUFFER, gl.RGBA8, w, h);
      gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
      gl.framebufferRenderbuffer(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.RENDERBUFFER, rb);
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      this.fb = fb;
      this.rb = rb;
      this.w = w;
      this.h = h;
    }
    this.blit(null, this.fb, [x, y, x + w, y + h], [0, 0, w, h]);
    this.at = [x, y];
  }

  /** Show the cached tile at `ltwh`; false when the cache does not fit there (then ray-cast). */
  restore(ltwh: number[]): boolean {
    const gl = this.gl;
    const [x, top, w, h] = ltwh.map(Math.round);
    const y = gl.drawingBufferHeight - top - h;
    if (!this.fb || this.w !== w || this.h !== h || this.at[0] !== x || this.at[1] !== y) return false;
    this.blit(this.fb, null, [0, 0, w, h], [x, y, x + w, y + h]);
    return true;
  }

  private blit(from: WebGLFramebuffer | null, to: WebGLFramebuffer | null, src: number[], dst: number[]): void {
    const gl = this.gl;
    const scissor = gl.isEnabled(gl.SCISSOR_TEST);
    if (scissor) gl.disable(gl.SCISSOR_TEST);
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, from);
    gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, to);
    gl.blitFramebuffer(src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], gl.COLOR_BUFFER_BIT, gl.NEAREST);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    if (scissor) gl.enable(gl.SCISSOR_TEST);
  }
}
